"""worker.tls.server_context: the TLS settings either make a context or stop the
worker with the variable's name (never a listener without its certificate)."""
import ssl

import pytest

from common.settings import Settings
from tests.support.certs import Certs
from worker.tls import TlsError, server_context


@pytest.fixture(scope="module")
def certs():
    return Certs()


def settings(**kw) -> Settings:
    return Settings(**kw)


def test_no_tls_listener_no_context(certs):
    assert server_context(settings(ws_port=8080)) is None


def test_certificate_and_key_make_a_server_context(certs):
    ctx = server_context(settings(tls_port=8883, tls_certfile=certs.server_crt, tls_keyfile=certs.server_key))
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("require, mode", [(False, ssl.CERT_OPTIONAL), (True, ssl.CERT_REQUIRED)])
def test_cafile_verifies_client_certificates(certs, require, mode):
    ctx = server_context(settings(wss_port=8081, **certs.settings(tls_require_certificate=require)))
    assert ctx.verify_mode == mode


@pytest.mark.parametrize("kw, says", [
    ({"tls_port": 8883}, "SHOAL_TLS_CERTFILE and SHOAL_TLS_KEYFILE"),
    ({"wss_port": 8081, "tls_certfile": "x.crt"}, "SHOAL_TLS_CERTFILE and SHOAL_TLS_KEYFILE"),
    ({"tls_port": 8883, "tls_certfile": "/nonexistent/s.crt", "tls_keyfile": "/nonexistent/s.key"},
     "SHOAL_TLS_CERTFILE=/nonexistent/s.crt"),
])
def test_missing_or_unreadable_certificate_is_refused(kw, says):
    with pytest.raises(TlsError, match=says):
        server_context(settings(**kw))


def test_required_certificate_needs_a_ca(certs):
    with pytest.raises(TlsError, match="need SHOAL_TLS_CAFILE"):
        server_context(settings(tls_port=8883, tls_certfile=certs.server_crt, tls_keyfile=certs.server_key,
                                tls_require_certificate=True))


def test_unreadable_ca_is_refused(certs):
    with pytest.raises(TlsError, match="SHOAL_TLS_CAFILE=/nonexistent/ca.crt"):
        server_context(settings(tls_port=8883, tls_certfile=certs.server_crt, tls_keyfile=certs.server_key,
                                tls_cafile="/nonexistent/ca.crt"))


def test_key_that_does_not_match_the_certificate_is_refused(certs):
    _, other_key = certs.client("someone")
    with pytest.raises(TlsError, match="SHOAL_TLS_KEYFILE"):
        server_context(settings(tls_port=8883, tls_certfile=certs.server_crt, tls_keyfile=other_key))
