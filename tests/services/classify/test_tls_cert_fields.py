"""TLS log: the server certificate's subject, issuer, serial and validity (TLS <= 1.2)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from services.classify.dissectors.tls_common import cert_details, certificate_msg_details


def make_cert(cn="legacy.lab.test", org='Evil, "Inc"\n', serial=0x0123456789ABCDEF):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FT Test CA")])
    nb = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    na = dt.datetime(2051, 6, 7, 8, 9, 10, tzinfo=dt.timezone.utc)    # GeneralizedTime after 2049
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(serial).not_valid_before(nb).not_valid_after(na).sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.DER), nb.timestamp(), na.timestamp()


def test_certificate_details():
    der, nb, na = make_cert()
    subject, issuer, serial, got_nb, got_na = cert_details(der)
    assert subject == 'CN=legacy.lab.test,O=Evil\\, \\"Inc\\"\\\\x0a,C=DE'
    assert issuer == "CN=FT Test CA"
    assert serial == "0123456789ABCDEF"
    assert (got_nb, got_na) == (nb, na)


def test_certificate_message_and_truncation():
    der, nb, _ = make_cert(serial=7)
    body = len(der).to_bytes(3, "big") + der
    msg = (len(body)).to_bytes(3, "big") + body
    assert certificate_msg_details(msg)[2] == "07"
    cut = certificate_msg_details(msg[:120])           # a sample that ends inside the certificate
    assert cut[2] == "07" and isinstance(cut[0], str)
    assert cert_details(b"") == ("", "", "", 0.0, 0.0)
    assert cert_details(b"\x30\x82\xff") == ("", "", "", 0.0, 0.0)
