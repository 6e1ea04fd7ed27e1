"""Passkeys (WebAuthn Level 3, the `webauthn` package): registration, and assertions for a
passwordless login, a login's second step, and step-up. No HTTP.

Each ceremony's challenge is the server's (32 random bytes), kept with what the ceremony is for
and for whom, behind an opaque handle the client sends back (stored as an HMAC): single use,
MFA_CHALLENGE_TTL. Checked on every response: the challenge, the origin (WEBAUTHN_ORIGINS) and
the RP ID hash (WEBAUTHN_RP_ID), user presence, user verification (registration and a
passwordless login: the passkey alone is both factors), the signature by the stored public key,
and the signature counter, which must grow: one that does not is a cloned authenticator, and
is refused and audited.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import webauthn
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from webauthn.helpers import options_to_json_dict
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from app.audit.service import record
from app.core.client import ClientInfo
from app.core.security import TokenHasher, b64url
from app.mfa import repository
from app.mfa.errors import InvalidFactorCode, PasskeyCeremonyInvalid
from app.mfa.repository import StoredCeremony, StoredPasskey

REGISTER = "register"
LOGIN = "login"  # passwordless: no account named before the assertion
SECOND_FACTOR = "second_factor"  # a two-step login's second step
STEP_UP = "step_up"
MAX_CREDENTIAL_ID = 1023  # bytes (WebAuthn §7.1 step 25)


@dataclass(frozen=True, slots=True)
class PasskeyProof:
    """A ceremony's handle and the browser's PublicKeyCredential, as JSON (its toJSON())."""

    ceremony: str
    credential: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ceremony:
    handle: str
    options: dict[str, Any]  # PublicKeyCredential{Creation,Request}OptionsJSON


@dataclass(frozen=True, slots=True)
class Asserted:
    user_id: uuid.UUID
    passkey: StoredPasskey
    user_verified: bool
    multi_device: bool  # backup eligible (BE): may be synced between devices

    @property
    def method(self) -> str:
        """RFC 8176: a passkey that may be synced is a software-secured key, a device-bound one
        a hardware-secured key."""
        return "swk" if self.multi_device else "hwk"


class Passkeys:
    def __init__(
        self,
        *,
        secret_key: str,
        rp_id: str,
        rp_name: str,
        origins: list[str],
        ceremony_ttl: timedelta,
    ) -> None:
        self._handles = TokenHasher(secret_key, "passkey_ceremony")
        self._rp_id = rp_id
        self._rp_name = rp_name
        self._origins = origins
        self._ttl = ceremony_ttl

    # --- registration ------------------------------------------------------------------------

    async def registration(
        self, conn: AsyncConnection, user_id: uuid.UUID, email: str, name: str, now: datetime
    ) -> Ceremony:
        existing = await repository.passkeys_of(conn, user_id)
        options = webauthn.generate_registration_options(
            rp_id=self._rp_id,
            rp_name=self._rp_name,
            user_id=user_id.bytes,  # an opaque handle, not the address
            user_name=email,
            attestation=AttestationConveyancePreference.NONE,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=p.credential_id) for p in existing
            ],
        )
        handle = await self._open(conn, REGISTER, user_id, options.challenge, now, name=name)
        return Ceremony(handle, options_to_json_dict(options))

    async def register(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        proof: PasskeyProof,
        now: datetime,
    ) -> StoredPasskey:
        ceremony = await self._take(conn, proof.ceremony, REGISTER, user_id, now)
        try:
            verified = webauthn.verify_registration_response(
                credential=proof.credential,
                expected_challenge=ceremony.challenge,
                expected_rp_id=self._rp_id,
                expected_origin=self._origins,
                require_user_verification=True,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise InvalidFactorCode("The passkey's registration does not check out.") from exc
        if len(verified.credential_id) > MAX_CREDENTIAL_ID:  # WebAuthn §7.1 step 25
            raise InvalidFactorCode("The passkey's credential id is too long.")
        if await repository.lock_passkey(conn, verified.credential_id) is not None:
            raise InvalidFactorCode("This passkey is registered already.")
        passkey = StoredPasskey(
            id=uuid.uuid4(),
            user_id=user_id,
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            backed_up=verified.credential_backed_up,
            name=ceremony.name or "Passkey",
            created_at=now,
            last_used_at=None,
        )
        try:
            await repository.insert_passkey(conn, passkey)
        except IntegrityError as exc:  # the same credential registered at this very moment
            raise InvalidFactorCode("This passkey is registered already.") from exc
        await record(
            conn,
            "passkey.registered",
            now=now,
            client=client,
            user_id=user_id,
            session_id=session_id,
            passkey_id=str(passkey.id),
            backed_up=passkey.backed_up,
        )
        return passkey

    # --- assertions --------------------------------------------------------------------------

    async def assertion(
        self, conn: AsyncConnection, purpose: str, user_id: uuid.UUID | None, now: datetime
    ) -> Ceremony:
        """Options for an assertion: any discoverable passkey of this RP for a passwordless
        login (`user_id` None), else one of the account's."""
        allowed = []
        if user_id is not None:
            allowed = [
                PublicKeyCredentialDescriptor(id=p.credential_id)
                for p in await repository.passkeys_of(conn, user_id)
            ]
        options = webauthn.generate_authentication_options(
            rp_id=self._rp_id,
            allow_credentials=allowed,
            user_verification=(
                UserVerificationRequirement.REQUIRED
                if purpose == LOGIN
                else UserVerificationRequirement.PREFERRED
            ),
        )
        handle = await self._open(conn, purpose, user_id, options.challenge, now)
        return Ceremony(handle, options_to_json_dict(options))

    async def verify(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        proof: PasskeyProof,
        now: datetime,
        *,
        purpose: str,
        user_id: uuid.UUID | None = None,
    ) -> Asserted:
        """The assertion's account and passkey; InvalidFactorCode if anything does not check
        out (the ceremony is spent either way)."""
        ceremony = await self._take(conn, proof.ceremony, purpose, user_id, now)
        passkey = await self._presented(conn, proof.credential)
        if passkey is None or (user_id is not None and passkey.user_id != user_id):
            raise InvalidFactorCode("This passkey is not one of this account's.")
        if not _handle_matches(proof.credential, passkey):  # WebAuthn §7.2 step 6
            raise InvalidFactorCode("The passkey's user handle is not its account's.")
        try:
            # The counter is compared below, once the signature is known to be the passkey's:
            # a forged answer must not be audited as a clone, nor a clone pass as a forgery.
            verified = webauthn.verify_authentication_response(
                credential=proof.credential,
                expected_challenge=ceremony.challenge,
                expected_rp_id=self._rp_id,
                expected_origin=self._origins,
                credential_public_key=passkey.public_key,
                credential_current_sign_count=0,
                require_user_verification=purpose == LOGIN,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise InvalidFactorCode("The passkey's answer does not check out.") from exc
        count = verified.new_sign_count
        if (count or passkey.sign_count) and count <= passkey.sign_count:
            await self._clone_suspected(conn, client, passkey, count, now)
            raise InvalidFactorCode("The passkey's signature counter went backwards.")
        await repository.passkey_used(
            conn, passkey.id, sign_count=count, backed_up=verified.credential_backed_up, now=now
        )
        multi_device = verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE
        return Asserted(passkey.user_id, passkey, verified.user_verified, multi_device)

    async def _presented(
        self, conn: AsyncConnection, credential: dict[str, Any]
    ) -> StoredPasskey | None:
        raw_id = credential.get("rawId") if isinstance(credential, dict) else None
        if not isinstance(raw_id, str) or len(raw_id) > 1400:  # base64url of 1,023 bytes
            return None
        try:
            credential_id = webauthn.base64url_to_bytes(raw_id)
        except ValueError:
            return None
        return await repository.lock_passkey(conn, credential_id)

    async def _clone_suspected(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        passkey: StoredPasskey,
        count: int,
        now: datetime,
    ) -> None:
        """A genuine signature with a counter that did not grow (WebAuthn §6.1.1): a cloned
        authenticator. Audited (the refusal's records commit with it)."""
        await record(
            conn,
            "passkey.clone_suspected",
            now=now,
            client=client,
            user_id=passkey.user_id,
            passkey_id=str(passkey.id),
            stored_count=passkey.sign_count,
            presented_count=count,
        )

    # --- the account's passkeys --------------------------------------------------------------

    async def list(self, conn: AsyncConnection, user_id: uuid.UUID) -> list[StoredPasskey]:
        return await repository.passkeys_of(conn, user_id)

    async def rename(
        self, conn: AsyncConnection, user_id: uuid.UUID, passkey_id: uuid.UUID, name: str
    ) -> bool:
        return await repository.rename_passkey(conn, user_id, passkey_id, name)

    async def delete(
        self, conn: AsyncConnection, user_id: uuid.UUID, passkey_id: uuid.UUID
    ) -> bool:
        return await repository.delete_passkey(conn, user_id, passkey_id)

    async def purge(self, conn: AsyncConnection, now: datetime) -> int:
        return await repository.delete_expired_ceremonies(conn, now)

    # --- internals ---------------------------------------------------------------------------

    async def _open(
        self,
        conn: AsyncConnection,
        purpose: str,
        user_id: uuid.UUID | None,
        challenge: bytes,
        now: datetime,
        *,
        name: str | None = None,
    ) -> str:
        handle = b64url(secrets.token_bytes(32))
        await repository.insert_ceremony(
            conn,
            token_hash=self._handles.hash(handle),
            purpose=purpose,
            user_id=user_id,
            challenge=challenge,
            name=name,
            now=now,
            expires_at=now + self._ttl,
        )
        return handle

    async def _take(
        self,
        conn: AsyncConnection,
        handle: str,
        purpose: str,
        user_id: uuid.UUID | None,
        now: datetime,
    ) -> StoredCeremony:
        ceremony = await repository.take_ceremony(conn, self._handles.hash(handle), now)
        if ceremony is None or ceremony.purpose != purpose or ceremony.user_id != user_id:
            raise PasskeyCeremonyInvalid()
        return ceremony


def _handle_matches(credential: dict[str, Any], passkey: StoredPasskey) -> bool:
    """The answer's user handle, if it gives one, is the passkey's account (the handle
    registration gave: the user id's bytes)."""
    response = credential.get("response")
    handle = response.get("userHandle") if isinstance(response, dict) else None
    if not handle:
        return True
    try:
        return bool(webauthn.base64url_to_bytes(str(handle)) == passkey.user_id.bytes)
    except ValueError:
        return False
