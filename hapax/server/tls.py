"""TLS material for the listeners: the TCP listener's :class:`ssl.SSLContext`, the QUIC
listener's :class:`~aioquic.quic.configuration.QuicConfiguration`, and the throwaway
certificate authority of ``hapax cert dev``.

Both listeners read the same ``server.tls`` files (``hapax.config.TLSConfig``, checked
when the configuration loads).  HTTPS over TCP accepts TLS 1.2 and 1.3 (ALPN
``http/1.1``); QUIC is TLS 1.3 by definition (ALPN ``h3``).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration

    from hapax.config import TLSConfig

__all__ = ["tcp_context", "reload_tcp_context", "quic_configuration", "DevCerts",
           "make_dev_certs", "H3_ALPN"]

#: The ALPN protocol ids HTTP/3 clients offer (RFC 9114 §3.1).
H3_ALPN = ["h3"]


def tcp_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TCP listener's server context: TLS 1.2+, ALPN ``http/1.1``, ``tls``'s
    certificate (reloaded in place by :func:`reload_tcp_context`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(tls.cert, tls.key)
    return context


def reload_tcp_context(context: ssl.SSLContext, tls: TLSConfig) -> None:
    """Load ``tls``'s (renewed) certificate into ``context``: connections accepted from
    now on present it; established ones keep theirs."""
    context.load_cert_chain(tls.cert, tls.key)


def quic_configuration(tls: TLSConfig, *, idle_timeout: float) -> QuicConfiguration:
    """The QUIC server configuration for ``tls``: ALPN ``h3``, TLS 1.3 (QUIC's only
    version), ``idle_timeout`` seconds of silence before a connection is dropped."""
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN,
                               idle_timeout=idle_timeout)
    config.load_cert_chain(tls.cert, tls.key)
    return config


@dataclass(frozen=True)
class DevCerts:
    """What ``hapax cert dev`` wrote: the CA to trust, and the server's certificate and
    key to put in ``server.tls``."""

    ca: Path
    cert: Path
    key: Path


def make_dev_certs(directory: Path, hosts: list[str], *, days: int = 30) -> DevCerts:
    """Write a local CA (``ca.pem``) and a server certificate for ``hosts`` signed by it
    (``cert.pem``, ``key.pem``, mode 0600) into ``directory``.  For tests and local
    development only: the CA's key is not kept, so it can sign nothing else."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(
        days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hapax development CA")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(not_before).not_valid_after(not_after)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    out = DevCerts(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.touch(mode=0o600)
    out.key.chmod(0o600)
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return out
