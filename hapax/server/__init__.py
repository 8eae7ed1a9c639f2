"""Listeners (HTTP/1.1 over TCP; HTTP/3 later) and the worker/supervisor processes."""
