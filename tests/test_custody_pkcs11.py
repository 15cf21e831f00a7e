"""CA keys on a PKCS#11 token (pki.custody.hsm), against a real SoftHSM2 token."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from pki.custody import hsm
from pki.custody.hsm import Pkcs11Key
from pki.custody.keys import CaKey, create_key, open_key, sign_certificate, sign_crl
from pki.custody.refs import Pkcs11Ref
from pki.errors import Conflict, InvalidInput, NotFound, WrongPassphrase
from pki.x509 import external
from pki.x509.keys import KeyType
from tests.custody_builders import CLEAN_LINT, ca_builder, crl_builder, judge, signed_set
from tests.softhsm_fixture import SoftHsmToken, unavailable


def _ref(token: SoftHsmToken, label: str | None, key_id: bytes | None = None, **changes: str) -> Pkcs11Ref:
    fields: dict[str, object] = {"module": token.module, "token": token.label, "label": label, "key_id": key_id,
                                 "pin_env": token.pin_env}
    fields.update(changes)
    if "pin_file" in changes:
        fields["pin_env"] = None
    return Pkcs11Ref(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", [k for k in KeyType if not k.is_mldsa])
def test_keys_generated_on_the_token_sign_what_openssl_and_pkilint_accept(
        tmp_path: Path, softhsm_token: SoftHsmToken, key_type: KeyType) -> None:
    key = create_key(_ref(softhsm_token, f"judged-{key_type}"), key_type)
    assert key.key_type is key_type
    root, good, revoked, crl = signed_set(key.public_key(), lambda b: sign_certificate(b, key),
                                          lambda b: sign_crl(b, key))
    judged = judge(tmp_path, root, good, revoked, crl)
    assert judged.good_leaf == "OK"
    assert "certificate revoked" in judged.revoked_leaf
    assert judged.lint == CLEAN_LINT
    assert root.signature_algorithm_oid == external.signature_algorithm(key_type)


@pytest.mark.parametrize("key_type", [k for k in KeyType if k.is_mldsa])
def test_ml_dsa_keys_on_a_token_are_refused_with_one_message(softhsm_token: SoftHsmToken, key_type: KeyType) -> None:
    """SoftHSM2 (2.6) has no ML-DSA mechanism: creating one is refused before the token is asked."""
    with pytest.raises(InvalidInput, match="ML-DSA CA keys are not supported on PKCS#11"):
        create_key(_ref(softhsm_token, f"pq-{key_type}"), key_type)


def test_a_generated_key_is_adopted_by_label_id_or_uri_and_cannot_be_exported(softhsm_token: SoftHsmToken) -> None:
    created = create_key(_ref(softhsm_token, "issuing-adopt"), KeyType.EC_P384)
    assert isinstance(created, Pkcs11Key) and created.ref.key_id  # an id was given to the pair
    by_label = open_key(_ref(softhsm_token, "issuing-adopt"))
    by_id = open_key(_ref(softhsm_token, None, created.ref.key_id))
    by_uri = open_key(str(created.ref))
    for key in (by_label, by_id, by_uri):
        assert key.public_key() == created.public_key()
        assert key.key_type is KeyType.EC_P384
    assert by_label.describe() == f"pkcs11 token 'rapki-test' key issuing-adopt ({KeyType.EC_P384})"

    def attributes(session: pkcs11.Session) -> tuple[bool, bool, bool]:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="issuing-adopt")
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[Attribute.VALUE]
        return private[Attribute.SENSITIVE], private[Attribute.EXTRACTABLE], private[Attribute.TOKEN]

    assert hsm._call(created.ref, attributes) == (True, False, True)
    with pytest.raises(Conflict, match="already holds a key issuing-adopt"):
        create_key(_ref(softhsm_token, "issuing-adopt"), KeyType.EC_P256)


def test_a_key_that_could_be_exported_is_not_adopted(softhsm_token: SoftHsmToken) -> None:
    ref = _ref(softhsm_token, "extractable")

    def make(session: pkcs11.Session) -> None:
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
        params.generate_keypair(store=True, label="extractable", id=b"\xee",
                                private_template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False})

    hsm._call(ref, make)
    with pytest.raises(InvalidInput, match="can be exported"):
        open_key(ref)


def test_pin_and_lookup_problems_are_named(tmp_path: Path, softhsm_token: SoftHsmToken,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    create_key(_ref(softhsm_token, "pin-checks"), KeyType.EC_P256)
    hsm.close_all()  # the next use logs in again
    monkeypatch.setenv("WRONG_PIN", "0000")
    with pytest.raises(WrongPassphrase, match=r"wrong PIN for token 'rapki-test' \(\$WRONG_PIN\)"):
        open_key(_ref(softhsm_token, "pin-checks", pin_env="WRONG_PIN"))
    monkeypatch.delenv("UNSET_PIN", raising=False)
    with pytest.raises(InvalidInput, match=r"\$UNSET_PIN is not set"):
        open_key(_ref(softhsm_token, "pin-checks", pin_env="UNSET_PIN"))
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm_token.pin + "\n")
    pin_file.chmod(0o640)
    with pytest.raises(InvalidInput, match="can be read by other users: chmod 600"):
        open_key(_ref(softhsm_token, "pin-checks", pin_file=str(pin_file)))
    pin_file.chmod(0o600)
    assert open_key(_ref(softhsm_token, "pin-checks", pin_file=str(pin_file))).key_type is KeyType.EC_P256
    with pytest.raises(NotFound, match="no private key nothing-here on token 'rapki-test'"):
        open_key(_ref(softhsm_token, "nothing-here"))
    with pytest.raises(NotFound, match=r"no token labelled 'no-such-token'.*'rapki-test'"):
        open_key(Pkcs11Ref(module=softhsm_token.module, token="no-such-token", label="k", pin_env="P"))
    with pytest.raises(InvalidInput, match="does not exist"):
        open_key(Pkcs11Ref(module=str(tmp_path / "missing.so"), token="t", label="k", pin_env="P"))


def test_threads_share_the_token_safely(softhsm_token: SoftHsmToken) -> None:
    keys: list[CaKey] = [create_key(_ref(softhsm_token, "threads-ec"), KeyType.EC_P256),
                         create_key(_ref(softhsm_token, "threads-rsa"), KeyType.RSA_2048)]
    failures: list[BaseException] = []
    issued: list[bytes] = []

    def work(index: int) -> None:
        key = keys[index % 2]
        try:
            for serial in range(10):
                cert = sign_certificate(ca_builder(key.public_key(), serial=index * 100 + serial + 1), key)
                issued.append(cert.signature)
        except BaseException as exc:  # collected, so a failure in a thread fails the test
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert len(issued) == 80  # every one verified before it was returned


def test_a_session_the_token_dropped_is_reopened(softhsm_token: SoftHsmToken) -> None:
    key = create_key(_ref(softhsm_token, "dropped"), KeyType.EC_P256)
    sign_crl(crl_builder(key.public_key(), [1]), key)
    module = hsm._module(softhsm_token.module)
    module.sessions[softhsm_token.label].close()  # behind the backend's back: its handle is now invalid
    crl = sign_crl(crl_builder(key.public_key(), [1, 2]), key)
    assert crl.is_signature_valid(key.public_key())  # type: ignore[arg-type]


def _sign_in_child(ref: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    key = open_key(ref)
    out.put(external.sign_crl(crl_builder(key.public_key(), [3]), key).tbs_certlist_bytes)


def test_a_forked_process_initialises_the_module_again(softhsm_token: SoftHsmToken) -> None:
    key = create_key(_ref(softhsm_token, "forked"), KeyType.EC_P256)
    sign_certificate(ca_builder(key.public_key()), key)  # the parent holds a logged-in session
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_sign_in_child, args=(str(key.ref), out))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert out.get(timeout=5)
    assert sign_certificate(ca_builder(key.public_key()), key)  # and the parent's session still works
    assert os.getpid() == hsm._module(softhsm_token.module).pid


def test_a_missing_softhsm_skips_here_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have it"):
        unavailable("softhsm2 is not installed")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y softhsm2"):
        unavailable("softhsm2 is not installed")
