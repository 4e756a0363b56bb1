"""HTTP clients for Sentry, GitHub and Jira, and what they share: one error and one request path.

Each client lives in its own module (`sentry`, `github`, `jira`); this package
holds `IntegrationError` and `ServiceClient`, the small httpx wrapper that turns
a failed request into a sentence a person can act on.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import httpx
import pydantic

from repos.errors import FixbotError, Transient

DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0

T = TypeVar("T")


class IntegrationError(FixbotError):
    """A call to Sentry, GitHub or Jira failed; `str(error)` says which, and what to do."""

    def __init__(self, service: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message
        self.status = status


class IntegrationUnavailable(IntegrationError, Transient):
    """Sentry, GitHub or Jira did not answer, or answered 429 or 5xx: worth asking again."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every vendor client: each new one loads the CA bundle again
    (~30 ms of CPU, a fifth of Fixbot's start)."""
    return httpx.create_ssl_context()


class ServiceClient:
    """An httpx.AsyncClient for one vendor API, with errors translated to `IntegrationError`."""

    service: ClassVar[str] = "service"
    token_setting: ClassVar[str] = "the token"

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=dict(headers or {}),
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
            transport=transport,
            follow_redirects=False,
            verify=_tls_context(),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def error(self, message: str, *, status: int | None = None) -> IntegrationError:
        """An `IntegrationError` naming this client's service."""
        return IntegrationError(self.service, message, status=status)

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return its decoded JSON body (None when it has none).

        `what` names the thing asked for ("issue SHOP-1") so that errors read well.
        """
        try:
            response = await self._http.request(method, url, json=json, params=params)
        except httpx.TimeoutException:
            message = f"{self.base_url} did not answer in time for {what}."
            raise IntegrationUnavailable(self.service, message) from None
        except httpx.TransportError as exc:
            message = f"could not reach {self.base_url} for {what} ({exc})."
            raise IntegrationUnavailable(self.service, message) from exc
        if response.is_error:
            raise self._status_error(response, what)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise self.error(f"answered {what} with something that is not JSON.") from None

    def parse(self, build: Callable[[Any], T], data: Any, *, what: str) -> T:
        """Build a model from a response body; a body of the wrong shape is an IntegrationError."""
        try:
            return build(data)
        except (pydantic.ValidationError, KeyError, TypeError, AttributeError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise self.error(f"answered {what} in a shape Fixbot can't read ({reason}).") from exc

    def _status_error(self, response: httpx.Response, what: str) -> IntegrationError:
        status = response.status_code
        detail = vendor_detail(response)
        said = f" It said: {detail}" if detail else ""
        if status == 401:
            message = f"the credentials were refused (HTTP 401); check {self.token_setting}."
        elif status == 403:
            message = f"the token may not read or change {what} (HTTP 403).{said}"
        elif status == 404:
            message = f"{what} was not found (HTTP 404).{said}"
        elif status == 429 or status >= 500:
            busy = (
                f"rate limit reached for {what} (HTTP 429); try again later."
                if status == 429
                else f"the server failed on {what} (HTTP {status}); try again later.{said}"
            )
            unavailable = IntegrationUnavailable(self.service, busy, status=status)
            unavailable.retry_after = _seconds(response.headers.get("Retry-After"))
            return unavailable
        else:
            message = f"the request for {what} was refused (HTTP {status}).{said}"
        return self.error(message, status=status)


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare from these APIs and ignored)."""
    try:
        return float(retry_after) if retry_after else None
    except ValueError:
        return None


def vendor_detail(response: httpx.Response) -> str:
    """The human part of an error body, in whichever form Sentry, GitHub or Jira used."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    for key in ("detail", "message"):  # Sentry uses detail, GitHub message
        if isinstance(body.get(key), str):
            parts.append(body[key])
    for error in body.get("errors") or []:  # GitHub's validation errors
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            parts.append(error["message"])
    parts.extend(str(m) for m in body.get("errorMessages") or [])  # Jira
    field_errors = body.get("errors")
    if isinstance(field_errors, dict):  # Jira's per-field errors
        parts.extend(f"{field}: {text}" for field, text in field_errors.items())
    return " ".join(parts)[:300]
