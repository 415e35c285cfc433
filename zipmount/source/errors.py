"""Library exceptions (botocore, aiohttp, ssl, OSError) turned into one-line, secret-free
:mod:`zipmount.errors`, and which of them are worth a retry."""

from __future__ import annotations

from ..errors import ObjectChanged, ObjectNotFound, SourceError, ZipmountError
from .options import StorageOptions


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain


def _error_code(exc: BaseException) -> str:
    for e in _causes(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(exc: BaseException, err: ZipmountError) -> bool:
    if isinstance(err, ObjectNotFound | ObjectChanged):
        return False
    text = " ".join(f"{type(e).__name__} {e}" for e in _causes(exc))
    if any(isinstance(e, TypeError | AttributeError | NameError) for e in _causes(exc)):
        return False  # a bug, not the network
    permanent = ("certificate", "SSL", "AccessDenied", "InvalidAccessKeyId", "Signature",
                 "NoCredentials", "PermissionError", "Forbidden")
    return not any(p in text for p in permanent)


def translate_error(exc: BaseException, what: str, options: StorageOptions) -> ZipmountError:
    """One-line, secret-free error for ``exc`` raised while doing ``what``."""
    if isinstance(exc, ZipmountError):
        return exc
    import ssl

    endpoint = options.endpoint_url or "the default S3 endpoint"
    causes = _causes(exc)
    code = _error_code(exc)
    text = " | ".join(f"{type(e).__name__}: {e}" for e in causes)
    if code in ("PreconditionFailed", "412") or "PreconditionFailed" in text:
        return ObjectChanged(f"{what}: the object changed on the server (ETag no longer matches)")
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in causes) or \
            "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return SourceError(f"TLS certificate verification failed for {endpoint} ({what}); "
                           "pass the private CA with --ca-bundle (or ca_bundle in the config; "
                           "in process, s3fs client_kwargs={'verify': PATH})")
    if any(isinstance(e, ssl.SSLError) for e in causes):
        return SourceError(f"TLS error talking to {endpoint} ({what})")
    if "NoCredentials" in text or "Unable to locate credentials" in text:
        return SourceError(f"no credentials found for {endpoint}: set AWS_ACCESS_KEY_ID/"
                           "AWS_SECRET_ACCESS_KEY, --profile, --env-file, or --anonymous")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or \
            any(isinstance(e, PermissionError) for e in causes):
        return SourceError(f"access denied by {endpoint} ({what}): check the credentials "
                           f"({code or 'Forbidden'})")
    if code in ("NoSuchBucket", "NoSuchKey", "404") or \
            any(isinstance(e, FileNotFoundError) for e in causes):
        kind = "bucket" if code == "NoSuchBucket" else "object"
        return ObjectNotFound(f"{kind} not found: {what.split(' ', 1)[-1]}")
    if any(isinstance(e, TimeoutError) for e in causes) or "Timeout" in text:
        return SourceError(f"timed out after {options.timeout:g} s talking to {endpoint} ({what})")
    if "Connect" in text or any(isinstance(e, ConnectionError) for e in causes):
        return SourceError(f"cannot reach {endpoint} ({what}): {_short(causes[-1])}")
    return SourceError(f"{what} failed: {_short(causes[0])}")


def _short(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return msg[:200]
