"""Sealing mesh packets and frames: AES-GCM with a keyring, or plain (development only).

Frame: one version byte, then for `SEALED` a random 96-bit nonce and the
AES-GCM ciphertext; the cluster label is the associated data, so a packet
from another cluster fails authentication even under the same key. The
primary (first) key seals; every installed key opens, which is what makes
rotation (install, use, remove) possible without downtime.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PLAIN = 1
SEALED = 2
NONCE = 12


class SealError(ValueError):
    """A frame that is not authentic, not for this cluster, or not of a known version."""


def parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError("mesh keys are base64") from None
    if len(key) not in (16, 24, 32):
        raise ValueError(f"a mesh key must be 16, 24 or 32 bytes, got {len(key)}")
    return key


class Keyring:
    def __init__(self, keys: list[bytes], label: str = "") -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self.keys = list(keys)
        self.label = label.encode()
        self._aeads = [AESGCM(k) for k in self.keys]

    def install(self, key: bytes) -> None:
        if key not in self.keys:
            self.keys.append(key)
            self._aeads.append(AESGCM(key))

    def use(self, key: bytes) -> None:
        """Make an installed key the primary."""
        index = self.keys.index(key)
        self.keys.insert(0, self.keys.pop(index))
        self._aeads.insert(0, self._aeads.pop(index))

    def remove(self, key: bytes) -> None:
        if self.keys and self.keys[0] == key:
            raise ValueError("cannot remove the primary key; use another one first")
        index = self.keys.index(key)
        del self.keys[index], self._aeads[index]

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return bytes([SEALED]) + nonce + self._aeads[0].encrypt(nonce, plaintext, self.label)

    def open(self, frame: bytes) -> bytes:
        if len(frame) < 1 + NONCE + 16 or frame[0] != SEALED:
            raise SealError("not a sealed frame")
        nonce, ciphertext = frame[1 : 1 + NONCE], frame[1 + NONCE :]
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, ciphertext, self.label)
            except InvalidTag:
                continue
        raise SealError("no installed key opens this frame (wrong key or cluster label)")


def seal(keyring: Keyring | None, plaintext: bytes) -> bytes:
    return keyring.seal(plaintext) if keyring is not None else bytes([PLAIN]) + plaintext


def open_frame(keyring: Keyring | None, frame: bytes) -> bytes:
    if keyring is not None:
        return keyring.open(frame)
    if not frame or frame[0] != PLAIN:
        raise SealError("an encrypted or unknown frame reached an unencrypted node")
    return frame[1:]
