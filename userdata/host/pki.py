"""Orthweb's one PKI: certificate authorities (optionally limited to names), server and client
certificates, revocation lists, and the checks on them. The host uses it for the site CA and the
server certificate, ``make modality-cert`` for DICOM client certificates, the test harness for
its local servers.

Written for the ``cryptography`` of Amazon Linux 2023 (python3-cryptography 36, Python 3.9) as
much as for newer releases: no API newer than 36 is used, and dates are read through ``not_after``
and ``next_update`` below (the ``*_utc`` properties came in 42).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A CA key this module signs with: RSA (what it makes), or EC P-256 (what an operator may bring).
SigningKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
# Certificates and CRLs start an hour in the past: an operator's clock and a host's may differ, and
# nginx refuses a certificate or CRL that is "not yet valid".
BACKDATE = datetime.timedelta(hours=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _utc(value: datetime.datetime) -> datetime.datetime:
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if isinstance(value, datetime.datetime) else _utc(cert.not_valid_after)


def not_before(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if isinstance(value, datetime.datetime) else _utc(cert.not_valid_before)


def next_update(crl: x509.CertificateRevocationList) -> datetime.datetime | None:
    value = getattr(crl, "next_update_utc", None)
    if isinstance(value, datetime.datetime):
        return value
    return _utc(crl.next_update) if crl.next_update else None


def revocation_date(entry: x509.RevokedCertificate) -> datetime.datetime:
    value = getattr(entry, "revocation_date_utc", None)
    return value if isinstance(value, datetime.datetime) else _utc(entry.revocation_date)


# -- PEM in and out ---------------------------------------------------------------------------------


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: SigningKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def crl_pem(crl: x509.CertificateRevocationList) -> str:
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def load_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def load_certs(pem: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order (ValueError if one does not parse)."""
    marker = "-----END CERTIFICATE-----"
    blocks = [b + marker for b in pem.split(marker) if "-----BEGIN CERTIFICATE-----" in b]
    return [load_cert(b[b.index("-----BEGIN CERTIFICATE-----") :]) for b in blocks]


def load_key(pem: str) -> SigningKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError("the key is neither RSA nor EC")
    return key


def load_crl(pem: str) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(pem.encode())


# -- names ----------------------------------------------------------------------------------------


def general_name(entry: str) -> x509.GeneralName:
    """``DNS:name`` or ``IP:address`` as a subject alternative name."""
    kind, _, value = entry.partition(":")
    if kind == "IP":
        return x509.IPAddress(ipaddress.ip_address(value))
    if kind == "DNS":
        return x509.DNSName(value)
    raise ValueError(f"{entry!r}: a name is DNS:<name> or IP:<address>")


def _subtree(entry: str) -> x509.GeneralName:
    kind, _, value = entry.partition(":")
    if kind == "IP":  # a name constraint on an address is a network: the address alone
        return x509.IPAddress(ipaddress.ip_network(value))
    return general_name(entry)


def _entry(name: x509.GeneralName) -> str:
    if isinstance(name, x509.IPAddress):
        value = name.value
        if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and value.num_addresses == 1:
            return f"IP:{value.network_address}"
        return f"IP:{value}"
    return f"DNS:{name.value}"


def subject(common_name: str, organization: str = "") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def alt_names(cert: x509.Certificate) -> set[str]:
    """The certificate's subject alternative names as ``DNS:...``/``IP:...``."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {_entry(n) for n in sans}


def permitted_names(ca: x509.Certificate) -> set[str] | None:
    """The names a name-constrained CA may vouch for; None when it is not constrained."""
    try:
        constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return {_entry(n) for n in constraints.permitted_subtrees or []}


# -- issuing --------------------------------------------------------------------------------------

_NO_USAGE = dict.fromkeys(
    (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ),
    False,
)


def _usage(**on: bool) -> x509.KeyUsage:
    return x509.KeyUsage(**{**_NO_USAGE, **on})


def make_ca(
    name: x509.Name,
    days: int,
    *,
    permitted: Sequence[str] = (),
    key: SigningKey | None = None,
    bits: int = 3072,
) -> tuple[x509.Certificate, SigningKey]:
    """A CA certificate that can sign certificates and CRLs but no CA below it; with ``permitted``
    (``DNS:``/``IP:`` names), only certificates for those names (critical name constraints)."""
    key = key or new_key(bits)
    start = now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if permitted:
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=[_subtree(n) for n in permitted], excluded_subtrees=None),
            critical=True,
        )
    return builder.sign(key, hashes.SHA256()), key


def issue(
    ca: x509.Certificate,
    ca_key: SigningKey,
    name: x509.Name,
    days: int,
    *,
    names: Iterable[str] = (),
    client: bool = False,
    bits: int = 2048,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A certificate signed by ``ca`` and its new key: serverAuth for ``names`` (DNS:/IP:), or, with
    ``client``, clientAuth. Never later than the CA itself."""
    key = new_key(bits)
    start = now()
    end = min(start + datetime.timedelta(days=days), not_after(ca))
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True, key_encipherment=not client), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    wanted = list(names)
    if wanted:
        builder = builder.add_extension(x509.SubjectAlternativeName([general_name(n) for n in wanted]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def sign_crl(
    ca: x509.Certificate,
    ca_key: SigningKey,
    revoked: Mapping[int, datetime.datetime],
    *,
    days: int,
    number: int = 1,
) -> x509.CertificateRevocationList:
    """A CRL of ``revoked`` (serial -> revocation date), valid ``days`` but never past the CA."""
    start = now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(start - BACKDATE)
        .next_update(min(start + datetime.timedelta(days=days), not_after(ca)))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    for serial, date in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


# -- checks -----------------------------------------------------------------------------------------


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """True when ``ca`` signed ``cert`` (issuer name and signature)."""
    if cert.issuer != ca.subject:
        return False
    public = ca.public_key()
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        return False
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return False
    except Exception:  # noqa: BLE001 - cryptography's InvalidSignature and friends: not issued by it
        return False
    return True


def crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    public = ca.public_key()
    if crl.issuer != ca.subject or not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return False
    return bool(crl.is_signature_valid(public))


def expires_within(when: datetime.datetime | None, days: float) -> bool:
    return when is None or when < now() + datetime.timedelta(days=days)
