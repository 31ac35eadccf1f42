"""Thin access layer over the official ``kubernetes`` client.

Every call goes through the generated API classes (auth, TLS and kubeconfig handling stay the
client's), asks for the raw response (``_preload_content=False``) and returns plain dicts, so
built-in and custom resources are handled alike. Patches are JSON merge patches (custom resources
refuse strategic merge patch with 415).

One retry policy (:class:`Backoff`) for every call, applied here and nowhere else: each request has
a timeout, and transient failures (429, 5xx, timeouts, connection errors) are retried with
exponential backoff (:attr:`Kube.backoff`). The run loop waits the same backoff before it tries a
failed reconcile again. Lease calls are not retried: the elector's own timer is their retry.

Every write except to the Lease first passes :attr:`Kube.fence` (set by the leader elector), before
each attempt: a replica that is not, or no longer, the leader raises :class:`NotLeader` instead of
writing, so no code path (pre-warm, retries, Events) can write without leadership.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
T = TypeVar("T")

MERGE_PATCH = "application/merge-patch+json"
RETRY_STATUS = {429, 500, 502, 503, 504}

KSERVE = ("serving.kserve.io", "v1beta1")
KSERVE_GRAPH = ("serving.kserve.io", "v1alpha1")
KNATIVE_PA = ("autoscaling.internal.knative.dev", "v1alpha1")
KNATIVE = ("serving.knative.dev", "v1")
GATEWAY = ("gateway.networking.k8s.io", "v1")
ROUTER_PLURALS = {"inferencegraphs", "httproutes"}  # plus Ingresses (networking API)
KARPENTER = ("karpenter.sh", "v1")


class NotFound(Exception):
    """The object or the resource type does not exist."""


class NotLeader(Exception):
    """A write refused before it was sent: this replica does not hold the Lease (any more)."""


@dataclass(frozen=True)
class Backoff:
    retries: int = 4
    initial_s: float = 1.0
    max_s: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (1, 2, ...): doubling, capped at max_s."""
        return min(self.max_s, self.initial_s * 2 ** (failures - 1))

    def delays(self) -> list[float]:
        """The waits before each of the ``retries`` retries of one call."""
        return [self.delay(i + 1) for i in range(self.retries)]


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in RETRY_STATUS or exc.status is None or exc.status == 0
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError)


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 409


def with_retry(
    fn: Callable[[], T],
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    what: str = "API call",
    on_retry: Callable[[BaseException], None] | None = None,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Call fn, retrying transient errors with exponential backoff (plus up to 10% jitter)."""
    delays = backoff.delays()
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt >= len(delays):
                raise
            delay = delays[attempt] * (1 + 0.1 * jitter())
            log.warning("%s failed (%s); retry %d/%d in %.2fs", what, describe(exc), attempt + 1, len(delays), delay)
            if on_retry is not None:
                on_retry(exc)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            pass
        return f"HTTP {exc.status} {exc.reason or ''}{': ' + message if message else ''}".strip()
    return f"{type(exc).__name__}: {exc}"


def api_client(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """An ApiClient from a kubeconfig file, else the in-cluster service account."""
    configuration = k8s.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        k8s_config.load_incluster_config(client_configuration=configuration)
    configuration.retries = False  # with_retry owns retries; urllib3's own would multiply them
    return k8s.ApiClient(configuration)


class Kube:
    """The Kubernetes calls the controller makes, returning dicts."""

    def __init__(
        self,
        api: k8s.ApiClient,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff(retries=0)
        self.sleep = sleep
        # Raises NotLeader (or a transient error: then the attempt is retried) unless this replica
        # may write now. None: no leader election (a single replica).
        self.fence: Callable[[], None] | None = None
        # Called with (source: "router" or "kubernetes", error) before each retry (metrics).
        self.on_retry: Callable[[str, BaseException], None] | None = None
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.networking = k8s.NetworkingV1Api(api)
        self.coordination = k8s.CoordinationV1Api(api)
        self.apps = k8s.AppsV1Api(api)

    def set_identity(self, identity: str) -> None:
        """Send the replica's identity in the User-Agent (audit logs show which replica wrote)."""
        self.api.user_agent = f"inference-traffic-controller/{identity}"

    def _call(self, method: Callable[..., Any], *args: Any, _write: bool = False, **kwargs: Any) -> dict:
        name = getattr(method, "__name__", "call")
        what = f"{name}{tuple(a for a in args if isinstance(a, str))}"
        source = (
            "router" if "ingress" in name or ROUTER_PLURALS & {a for a in args if isinstance(a, str)} else "kubernetes"
        )

        def attempt() -> dict:
            if _write and self.fence is not None:
                self.fence()
            kw = dict(kwargs)
            kw.setdefault("_request_timeout", self.timeout_s)
            resp = method(*args, _preload_content=False, **kw)
            try:
                data = resp.data
            finally:
                resp.release_conn()
            return json.loads(data) if data else {}

        def count(exc: BaseException) -> None:
            if self.on_retry is not None:
                self.on_retry(source, exc)

        return with_retry(attempt, self.backoff, self.sleep, what, on_retry=count)

    def _call_or_none(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict | None:
        try:
            return self._call(method, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # ---- custom resources
    def get_custom(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict | None:
        return self._call_or_none(self.custom.get_namespaced_custom_object, group, version, namespace, plural, name)

    def patch_custom(self, group: str, version: str, namespace: str, plural: str, name: str, body: dict) -> dict:
        return self._call(
            self.custom.patch_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            name,
            body,
            _content_type=MERGE_PATCH,
            _write=True,
        )

    def list_custom(
        self, group: str, version: str, plural: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict]:
        """Items of a custom resource; raises NotFound when the resource type is not installed."""
        kw = {"label_selector": label_selector} if label_selector else {}
        if namespace is None:
            result = self._call_or_none(self.custom.list_cluster_custom_object, group, version, plural, **kw)
        else:
            result = self._call_or_none(
                self.custom.list_namespaced_custom_object, group, version, namespace, plural, **kw
            )
        if result is None:
            raise NotFound(f"{plural}.{group}/{version}")
        return result.get("items") or []

    # ---- core
    def list_pods(self, namespace: str, label_selector: str) -> list[dict]:
        return self._call(self.core.list_namespaced_pod, namespace, label_selector=label_selector).get("items") or []

    def list_events(self, namespace: str, field_selector: str) -> list[dict]:
        return self._call(self.core.list_namespaced_event, namespace, field_selector=field_selector).get("items") or []

    def create_event(self, namespace: str, body: dict) -> dict:
        return self._call(self.core.create_namespaced_event, namespace, body, _write=True)

    def list_deployments(self, namespace: str, label_selector: str) -> list[dict]:
        return (
            self._call(self.apps.list_namespaced_deployment, namespace, label_selector=label_selector).get("items")
            or []
        )

    # ---- configmaps (the controller's persisted state, controller/state.py)
    def get_configmap(self, namespace: str, name: str) -> dict | None:
        return self._call_or_none(self.core.read_namespaced_config_map, name, namespace)

    def create_configmap(self, namespace: str, body: dict) -> dict:
        return self._call(self.core.create_namespaced_config_map, namespace, body, _write=True)

    def patch_configmap(self, namespace: str, name: str, body: dict) -> dict:
        return self._call(
            self.core.patch_namespaced_config_map, name, namespace, body, _content_type=MERGE_PATCH, _write=True
        )

    # ---- ingress
    def get_ingress(self, namespace: str, name: str) -> dict | None:
        return self._call_or_none(self.networking.read_namespaced_ingress, name, namespace)

    def patch_ingress(self, namespace: str, name: str, body: dict) -> dict:
        return self._call(
            self.networking.patch_namespaced_ingress, name, namespace, body, _content_type=MERGE_PATCH, _write=True
        )

    # ---- leases
    # Lease writes go through ApiClient.call_api with the dict as is: the typed V1Lease model would
    # re-serialize renewTime with datetime.isoformat(), which drops the microseconds that the API
    # server's MicroTime format requires when they happen to be zero.
    def get_lease(self, namespace: str, name: str) -> dict | None:
        """The Lease, or None; one attempt (no retries: the elector's timer retries)."""
        try:
            resp = self.coordination.read_namespaced_lease(
                name, namespace, _preload_content=False, _request_timeout=self.timeout_s
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        try:
            data = resp.data
        finally:
            resp.release_conn()
        return json.loads(data) if data else {}

    def create_lease(self, namespace: str, body: dict) -> dict:
        return self._raw("POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body)

    def replace_lease(self, namespace: str, name: str, body: dict) -> dict:
        return self._raw("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", body)

    def _raw(self, method: str, path: str, body: dict) -> dict:
        params = self.api.param_serialize(
            method=method,
            resource_path=path,
            body=body,
            auth_settings=["BearerToken"],
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
        )
        resp = self.api.call_api(*params, _request_timeout=self.timeout_s)
        resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return json.loads(resp.data) if resp.data else {}
