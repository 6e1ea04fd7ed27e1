"""`python -m bench.kit`: requests/s of the notes service's `GET /notes` (examples/notes, every
request verified by authsvc-kit: typ, pinned alg, JWKS key, claims, revocation check) against a
bare FastAPI endpoint doing only the same PyJWT ES256 verification (bench/kit_bare.py), in the
same run, alternating, on the same uvicorn settings. The issuer is a folder of static files
(discovery and JWKS) served by `python -m http.server`: the kit fetches the keys once.

Target (issue 17): notes / bare >= 0.9."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from bench.__main__ import Result, _free_port, _launch, stop, wrk

AUDIENCE = "bench-notes"
TARGET = 0.9


def _issuer_folder(folder: Path, issuer: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """Discovery and JWKS as static files; returns the signing key and its kid."""
    key = ec.generate_private_key(ec.SECP256R1())
    kid = uuid.uuid4().hex[:16]
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "ES256"}
    well_known = folder / ".well-known"
    well_known.mkdir()
    discovery = {"issuer": issuer, "jwks_uri": f"{issuer}/.well-known/jwks.json"}
    (well_known / "openid-configuration").write_text(json.dumps(discovery))
    (well_known / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / "public.pem").write_bytes(pem)
    return key, kid


def _token(key: ec.EllipticCurvePrivateKey, kid: str, issuer: str) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 3000,
        "client_id": "authsvc",
        "role": "user",
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


def _uvicorn(target: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kit", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-kit-") as tmp:
        folder = Path(tmp)
        issuer_port, notes_port, bare_port = _free_port(), _free_port(), _free_port()
        issuer = f"http://127.0.0.1:{issuer_port}"
        key, kid = _issuer_folder(folder, issuer)
        token = _token(key, kid, issuer)
        static = [sys.executable, "-m", "http.server", str(issuer_port)]
        static += ["--bind", "127.0.0.1", "--directory", str(folder)]
        env = {
            "AUTHSVC_ISSUER": issuer,
            "AUTHSVC_AUDIENCE": AUDIENCE,
            "NOTES_CLIENT_ID": "notes",
            "BENCH_KIT_PUBLIC_PEM": str(folder / "public.pem"),
            "BENCH_KIT_ISSUER": issuer,
            "BENCH_KIT_AUDIENCE": AUDIENCE,
        }
        processes = [_launch(static, {}, f"{issuer}/.well-known/jwks.json")]
        try:
            notes_cmd = _uvicorn("examples.notes.app:app", notes_port, args.workers)
            bare_cmd = _uvicorn("bench.kit_bare:app", bare_port, args.workers)
            processes.append(_launch(notes_cmd, env, f"http://127.0.0.1:{notes_port}/healthz"))
            processes.append(_launch(bare_cmd, env, f"http://127.0.0.1:{bare_port}/healthz"))
            results = _rounds(args, token, notes_port, bare_port)
        finally:
            for process in processes:
                stop(process)
    _report(args, results)
    return 0


def _rounds(
    args: argparse.Namespace, token: str, notes_port: int, bare_port: int
) -> dict[str, list[Result]]:
    auth = {"Authorization": f"Bearer {token}"}
    results: dict[str, list[Result]] = {"bare": [], "notes": []}
    for _ in range(args.rounds):
        for name, port in (("bare", bare_port), ("notes", notes_port)):
            result = wrk(
                name,
                f"http://127.0.0.1:{port}/notes",
                duration=args.duration,
                threads=2,
                connections=args.connections,
                headers=auth,
            )
            if result.errors:
                raise SystemExit(f"{name}: {result.errors} errors (non-2xx or socket)")
            results[name].append(result)
    return results


def _report(args: argparse.Namespace, results: dict[str, list[Result]]) -> None:
    print(
        f"\nGET /notes, ES256, {args.workers} uvicorn worker(s), wrk 2 threads "
        f"{args.connections} connections, {args.rounds} x {args.duration}s alternating"
    )
    for name, runs in results.items():
        rps = [r.rps for r in runs]
        p99 = statistics.median(r.p99_ms for r in runs)
        print(
            f"  {name:6} median {statistics.median(rps):8.0f} req/s  runs {rps}  p99 {p99:.1f} ms"
        )
    ratio = statistics.median(r.rps for r in results["notes"]) / statistics.median(
        r.rps for r in results["bare"]
    )
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"  notes / bare = {ratio:.3f} ({verdict} the >= {TARGET} target)")


if __name__ == "__main__":
    sys.exit(main())
