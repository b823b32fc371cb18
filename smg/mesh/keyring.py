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


# why a frame could not be opened, for the operator (see smg.mesh.diagnostics)
KEY_OR_LABEL = "key_or_label"  # sealed, but no installed key opens it under our label
PEER_UNENCRYPTED = "peer_unencrypted"  # a plain frame reached a node with a key
PEER_ENCRYPTED = "peer_encrypted"  # a sealed frame reached a node without one
NOT_MESH = "not_mesh"  # no known version byte: another program, or an incompatible smg


class SealError(ValueError):
    """A frame that is not authentic, not for this cluster, or not of a known version.

    `cause` says which, as far as the receiver can tell: a wrong key and a wrong
    cluster label fail the same AES-GCM tag check, so they are one cause."""

    def __init__(self, message: str, cause: str = KEY_OR_LABEL) -> None:
        super().__init__(message)
        self.cause = cause


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
        if frame[:1] == bytes([PLAIN]):
            raise SealError("an unencrypted frame reached an encrypted node", PEER_UNENCRYPTED)
        if len(frame) < 1 + NONCE + 16 or frame[0] != SEALED:
            raise SealError("not a sealed frame", NOT_MESH)
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
    if frame[:1] == bytes([SEALED]):
        raise SealError("an encrypted frame reached an unencrypted node", PEER_ENCRYPTED)
    if not frame or frame[0] != PLAIN:
        raise SealError("an unknown frame reached an unencrypted node", NOT_MESH)
    return frame[1:]
