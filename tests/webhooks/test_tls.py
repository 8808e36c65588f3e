"""https receivers: the certificate is verified against the trusted CAs (for the name in the
URL, while the connection goes to the address that was checked)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.db.engine import session_scope
from core.jobs import lifecycle as jobs
from core.webhooks import events
from core.webhooks.delivery import DeliveryLoop
from tests.webhooks.conftest import FAST, add_endpoint, new_org, running_job
from tests.webhooks.receiver import Receiver


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dorado-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[Receiver, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    receiver = Receiver(tls=context)
    yield receiver, cert
    receiver.close()


def deliver_once(db_url, box, receiver: Receiver) -> str:
    org = new_org(db_url)
    endpoint_id, _ = add_endpoint(db_url, box, org, receiver.url(), [events.CANCELLED])
    job, _ = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, job)
    loop = DeliveryLoop(db_url, box, FAST)
    assert loop.run_once() == 1
    return endpoint_id


def wait_for_outcome(db_url: str, endpoint_id: str):
    from core.webhooks import endpoints

    deadline = time.monotonic() + 10
    while True:
        with session_scope(db_url) as session:
            endpoint = endpoints.get_endpoint(session, None, endpoint_id)
            ((delivery, _),), _ = endpoints.list_deliveries(session, endpoint)
            if delivery.last_attempt_at and (delivery.last_status_code or delivery.last_error):
                return delivery
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_an_untrusted_certificate_gets_nothing(db_url, box, tls_receiver):
    receiver, _ = tls_receiver
    delivery = wait_for_outcome(db_url, deliver_once(db_url, box, receiver))
    assert delivery.last_status_code is None and "CERTIFICATE_VERIFY_FAILED" in delivery.last_error
    assert receiver.requests() == []


def test_a_trusted_certificate_is_delivered_to(db_url, box, tls_receiver, monkeypatch):
    receiver, cert = tls_receiver
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust it, as a private CA would be
    delivery = wait_for_outcome(db_url, deliver_once(db_url, box, receiver))
    assert delivery.last_status_code == 200, delivery.last_error
    assert len(receiver.wait_for(1)) == 1
