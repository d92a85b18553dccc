"""The key behind integration secrets: scrypt for passphrases, the old SHA-256 key open-only."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
from cryptography.fernet import Fernet, InvalidToken

from app.integrations.secrets import (
    SECRETS_SALT,
    SecretBox,
    SecretsUnreadable,
    derive_key,
    legacy_key,
    verbatim_key,
)

# Sealed by the code before scrypt (one SHA-256 of "inferq-integrations:" + passphrase) with
# the passphrase below: it must keep opening.
OLD_PASSPHRASE = "sealed before scrypt"
OLD_TOKEN = (
    "gAAAAABrETOOCd7KhScK-FD3e8_tH83zN4-3lBaCdQ2f5dioEXHaaXE02-l_Q8H42OhTwDo2Oi6gY9q1ETNxWAr3Qx7r"
    "LtFML86xNkQ3CuH2Ow8Dz5CQRo8Ua_gsr3b15cS5N3LCS9dg"
)
OLD_SECRETS = {"api_token": "legacy-api-token-0001"}


def _sha256_key(passphrase: str) -> bytes:
    """The old derivation, written out here so the test does not lean on ``legacy_key``."""
    digest = hashlib.sha256(b"inferq-integrations:" + passphrase.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def test_a_ciphertext_sealed_with_the_old_sha256_key_still_opens() -> None:
    box = SecretBox([OLD_PASSPHRASE])
    assert box.open(OLD_TOKEN) == OLD_SECRETS
    assert legacy_key(OLD_PASSPHRASE) == _sha256_key(OLD_PASSPHRASE)
    # and when that passphrase is only the second key (rotation)
    assert SecretBox(["a newer passphrase", OLD_PASSPHRASE]).open(OLD_TOKEN) == OLD_SECRETS


def test_seal_uses_the_scrypt_key_never_the_legacy_one() -> None:
    token = SecretBox([OLD_PASSPHRASE]).seal({"api_token": "new-api-token-0002"})
    with pytest.raises(InvalidToken):
        Fernet(_sha256_key(OLD_PASSPHRASE)).decrypt(token.encode())
    assert Fernet(derive_key(OLD_PASSPHRASE)).decrypt(token.encode()) == (
        b'{"api_token":"new-api-token-0002"}'
    )


def test_rotate_reseals_an_old_ciphertext_with_the_scrypt_key() -> None:
    rotated = SecretBox([OLD_PASSPHRASE]).rotate(OLD_TOKEN)
    with pytest.raises(InvalidToken):
        Fernet(_sha256_key(OLD_PASSPHRASE)).decrypt(rotated.encode())
    assert Fernet(derive_key(OLD_PASSPHRASE)).decrypt(rotated.encode()) == (
        b'{"api_token":"legacy-api-token-0001"}'
    )
    with pytest.raises(SecretsUnreadable):
        SecretBox(["another passphrase"]).rotate(OLD_TOKEN)


def test_the_derived_key_is_scrypt_deterministic_and_not_sha256() -> None:
    key = derive_key("correct horse battery staple")
    # pinned: a change of parameters or salt would lock every installation out of its secrets
    assert key == b"YDyoYC1xXp9tNHbK6pTMuxhc8zNMq31UHPmix4vhc2c="
    expected = hashlib.scrypt(
        b"correct horse battery staple", salt=SECRETS_SALT, n=2**14, r=8, p=1, dklen=32
    )
    assert base64.urlsafe_b64decode(key) == expected
    assert key != _sha256_key("correct horse battery staple")
    assert derive_key("correct horse battery staple ") == key  # configured values are stripped
    assert derive_key("correct horse battery stapler") != key
    Fernet(key)  # a valid Fernet key


def test_the_derived_key_is_derived_once_per_passphrase() -> None:
    passphrase = f"cached passphrase {time.time_ns()}"
    before = derive_key.cache_info()
    SecretBox([passphrase])
    SecretBox([passphrase])
    after = derive_key.cache_info()
    assert after.misses - before.misses == 1
    assert after.hits - before.hits >= 1


def test_a_verbatim_fernet_key_is_used_as_is() -> None:
    key = Fernet.generate_key()
    assert verbatim_key(key.decode()) == key
    assert verbatim_key(f"  {key.decode()}\n") == key
    assert verbatim_key("not a key") is None
    box = SecretBox([key.decode()])
    token = box.seal({"api_token": "verbatim-api-token-0003"})
    assert Fernet(key).decrypt(token.encode()) == b'{"api_token":"verbatim-api-token-0003"}'
    # no derived or legacy key beside it: what another key sealed does not open
    other = Fernet(_sha256_key(key.decode())).encrypt(b"{}").decode()
    with pytest.raises(SecretsUnreadable):
        box.open(other)
