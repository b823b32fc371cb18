"""Kubernetes pods as workers (sans-IO): which pods are workers, the worker each one is, and the set
of them kept from a LIST and the WATCH events that follow it.

The shell (`kubernetes.py`) lists the pods the selector matches, watches from the list's
`resourceVersion`, and feeds both to a `PodSet`; `PodSet.wanted()` is then what discovery should
have registered, which the shell applies as it applies a manifest (`manifest.diff`). A pod is a
worker while it is Running and Ready, has an IP, is not being deleted and carries every selector
label, so a pod that stops being one (not ready, deleted, relabelled out of the selector) leaves
the set and one that becomes one joins it, whatever event said so.

Nothing the API server sends can raise out of here: a malformed pod or event is skipped and
reported (`PodSet.take_problems`), and the other pods still count. Only a LIST answer that is not
a pod list at all is refused whole (`ApiError`): the registry then stays as it was.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from smg.discovery.manifest import WorkerSpec
from smg.http.errors import parse_json
from smg.workers.registry import normalize_url

T = TypeVar("T")
Selector = dict[str, str]
Convert = Callable[[dict[str, Any], list[str]], T | None]  # (pod, notes) -> value, or None: not one

MAX_MODEL_ID = 256  # a model id from pod metadata (annotations are not bounded by Kubernetes)
MAX_REPORTED = 1000  # problems remembered between two `take_problems` (a flood is cut, not held)

# label syntax (Kubernetes: an optional DNS-subdomain prefix, a name of 63 characters at most)
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")


class PodError(ValueError):
    """A pod (or event) that cannot be read; the message says what is wrong with it."""


class ApiError(ValueError):
    """An API server answer that cannot be used at all; the registry stays as it was."""


# -- selectors -------------------------------------------------------------------------------


def parse_selector(pairs: Iterable[str]) -> Selector:
    """`key=value` terms (`--selector`, `--router-selector`) as a dict; raises ValueError saying which
    term is not a Kubernetes label term, or that two terms ask for different values of one key."""
    out: Selector = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _KEY.match(key) or not _VALUE.match(value):
            raise ValueError(f"'{pair}' is not key=value with a Kubernetes label key and value")
        if out.get(key, value) != value:
            raise ValueError(f"'{key}' is given two values ({out[key]}, {value}): no pod could match")
        out[key] = value
    return out


def selector_query(selector: Mapping[str, str]) -> str:
    """The `labelSelector` query value: every term must hold."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Every selector term holds (no selector: every pod)."""
    return all(labels.get(key) == value for key, value in selector.items())


# -- one pod ---------------------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PodError(f"{what} is not an object")
    return value


def pod_key(pod: Any) -> str:
    """`namespace/name`: how the API server names a pod (the key of the set)."""
    if not isinstance(pod, dict):
        raise PodError("not an object")
    meta = _object(pod.get("metadata"), "metadata")
    name, namespace = meta.get("name"), meta.get("namespace", "")
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        raise PodError("no metadata.name")
    return f"{namespace}/{name}"


def _strings(value: Any, what: str) -> dict[str, str]:
    mapping = _object(value, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise PodError(f"{what} must map strings to strings")
    return mapping


def labels_of(pod: dict[str, Any]) -> dict[str, str]:
    return _strings(_object(pod.get("metadata"), "metadata").get("labels"), "metadata.labels")


def _status(pod: dict[str, Any]) -> dict[str, Any]:
    return _object(pod.get("status"), "status")


def pod_ip(pod: dict[str, Any]) -> str | None:
    """`status.podIP`, checked (None: not given one yet)."""
    ip = _status(pod).get("podIP")
    if ip is None or ip == "":
        return None
    if not isinstance(ip, str):
        raise PodError("status.podIP is not a string")
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise PodError(f"status.podIP '{ip[:64]}' is not an IP address") from None


def is_deleting(pod: dict[str, Any]) -> bool:
    """Being deleted (`metadata.deletionTimestamp` set): it is draining, take it out now."""
    return _object(pod.get("metadata"), "metadata").get("deletionTimestamp") is not None


def is_running(pod: dict[str, Any]) -> bool:
    return _status(pod).get("phase") == "Running"


def is_ready(pod: dict[str, Any]) -> bool:
    """Its `Ready` condition is `True`: every container's readiness probe passes."""
    conditions = _status(pod).get("conditions")
    if conditions is None:
        return False
    if not isinstance(conditions, list):
        raise PodError("status.conditions is not a list")
    return any(isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def model_id_of(pod: dict[str, Any], model_id_from: str) -> str | None:
    """The model id `--model-id-from` reads from the pod (`namespace`, `label:<key>`,
    `annotation:<key>`); None when the pod does not carry it."""
    meta = _object(pod.get("metadata"), "metadata")
    if model_id_from == "namespace":
        value = meta.get("namespace")
    else:
        kind, _, key = model_id_from.partition(":")
        field = "labels" if kind == "label" else "annotations"
        value = _strings(meta.get(field), f"metadata.{field}").get(key)
    if not isinstance(value, str) or not value.strip():
        return None
    if len(value) > MAX_MODEL_ID:
        raise PodError(f"its model id ({model_id_from}) is longer than {MAX_MODEL_ID} characters")
    return value.strip()


@dataclass(frozen=True)
class WorkerRules:
    """What makes a pod a worker, and the worker it is."""

    selector: Selector
    port: int  # --service-discovery-port
    model_id_from: str | None = None  # --model-id-from


def worker_of(pod: dict[str, Any], rules: WorkerRules, notes: list[str]) -> WorkerSpec | None:
    """The worker `pod` is (`http://<podIP>:<port>`, its labels, and its model id with
    `--model-id-from`), or None while it is not one; raises PodError for a pod that cannot be read."""
    key = pod_key(pod)
    labels = labels_of(pod)
    if not matches(labels, rules.selector) or is_deleting(pod) or not is_running(pod) or not is_ready(pod):
        return None
    ip = pod_ip(pod)
    if ip is None:
        return None
    model_id = None
    if rules.model_id_from is not None:
        model_id = model_id_of(pod, rules.model_id_from)
        if model_id is None:
            notes.append(f"pod {key} has no {rules.model_id_from} (--model-id-from): its worker serves the models it reports")
    try:
        url = normalize_url(f"http://{host_port(ip, rules.port)}")
    except ValueError as exc:
        raise PodError(str(exc)) from None
    return WorkerSpec(url, {"labels": dict(labels)}, model_id=model_id, origin=f"pod {key}")


def router_of(pod: dict[str, Any], selector: Selector, notes: list[str]) -> str | None:
    """The pod IP of a gateway pod `--router-selector` matches: a mesh seed (with `--mesh-port`).

    Readiness is not asked: a gateway that is starting may wait for its peers' state before it
    reports ready, so waiting for its readiness before joining it could hold every one back."""
    pod_key(pod)
    if not matches(labels_of(pod), selector) or is_deleting(pod) or not is_running(pod):
        return None
    return pod_ip(pod)


# -- the set kept from LIST and WATCH --------------------------------------------------------


class Step(Enum):
    """What the shell does after a watch event."""

    CONTINUE = "continue"  # keep reading the stream
    REWATCH = "rewatch"  # the stream ended with an error: watch again from `resource_version`
    RELIST = "relist"  # the resourceVersion expired (410 Gone): list again, then watch


@dataclass(frozen=True)
class PodList:
    items: list[Any]
    resource_version: str
    next_page: str | None  # `metadata.continue`: more pages to fetch


def parse_list(data: bytes) -> PodList:
    """A LIST answer (one page); ApiError when it is not a pod list."""
    try:
        doc = parse_json(data)
    except ValueError as exc:
        raise ApiError(f"the pod list is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items") or [], list):
        raise ApiError("the answer is not a pod list (no items)")
    meta = doc.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    if not isinstance(version, str) or not version:
        raise ApiError("the pod list has no metadata.resourceVersion")
    next_page = meta.get("continue") if isinstance(meta, dict) else None
    return PodList(doc.get("items") or [], version, next_page if isinstance(next_page, str) and next_page else None)


class PodSet(Generic[T]):
    """The pods of one selector that are something (a worker, a mesh seed), by `namespace/name`.

    `convert` says what a pod is (None: nothing yet), may append notes worth telling an operator,
    and raises PodError for a pod it cannot read. `identity` says when two pods give the same
    thing (two pods on one host network give one worker URL): the first by name is kept.
    """

    def __init__(self, convert: Convert[T], identity: Callable[[T], Hashable] = lambda value: value) -> None:
        self._convert = convert
        self._identity = identity
        self._values: dict[str, T] = {}
        self.resource_version: str | None = None  # where the next watch starts; None: list first
        self._problems: list[str] = []
        self._told: set[str] = set()  # duplicates already reported

    def listed(self, items: list[Any], resource_version: str) -> None:
        """A complete LIST (every page): it replaces what the events said before."""
        values: dict[str, T] = {}
        for i, item in enumerate(items):
            try:
                key = pod_key(item)
            except PodError as exc:
                self._report(f"pod list item {i} skipped: {exc}")
                continue
            value = self._value(key, item)
            if value is not None:
                values[key] = value
        self._values = values
        self.resource_version = resource_version

    def event(self, line: bytes) -> Step:
        """One watch event (a line of the stream): the set follows it; the step says what next."""
        try:
            doc = parse_json(line)
        except ValueError as exc:
            self._report(f"watch event skipped: not JSON ({exc})")
            return Step.CONTINUE
        kind = doc.get("type") if isinstance(doc, dict) else None
        obj = doc.get("object") if isinstance(doc, dict) else None
        if not isinstance(kind, str) or not isinstance(obj, dict):
            self._report("watch event skipped: no type and object")
            return Step.CONTINUE
        if kind == "ERROR":
            return self._error(obj)
        meta = obj.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if isinstance(version, str) and version:
            self.resource_version = version  # even for a pod skipped below: it is behind us
        if kind == "BOOKMARK":
            return Step.CONTINUE
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            self._report(f"watch event of unknown type '{kind[:32]}' skipped")
            return Step.CONTINUE
        if obj.get("kind", "Pod") != "Pod":
            self._report(f"watch event skipped: a {str(obj.get('kind'))[:32]}, not a Pod")
            return Step.CONTINUE
        try:
            key = pod_key(obj)
        except PodError as exc:
            self._report(f"watch event skipped: {exc}")
            return Step.CONTINUE
        value = None if kind == "DELETED" else self._value(key, obj)
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = value
        return Step.CONTINUE

    def _error(self, status: dict[str, Any]) -> Step:
        code, message = status.get("code"), str(status.get("message") or status.get("reason") or "no message")[:200]
        if code == 410:  # Gone / Expired: the version is older than the server keeps; list again
            self.resource_version = None
            return Step.RELIST
        self._report(f"the watch ended with an error ({code}: {message}); watching again")
        return Step.REWATCH

    def expired(self) -> None:
        """The server refused the watch's version (410 before the stream started): list again."""
        self.resource_version = None

    def _value(self, key: str, pod: dict[str, Any]) -> T | None:
        notes: list[str] = []
        try:
            value = self._convert(pod, notes)
        except PodError as exc:
            self._report(f"pod {key} skipped: {exc}")
            return None
        for note in notes:
            self._report(note)
        return value

    def wanted(self) -> list[T]:
        """What the pods are now, in pod-name order; one per identity."""
        out: dict[Hashable, tuple[str, T]] = {}
        for key in sorted(self._values):
            value = self._values[key]
            identity = self._identity(value)
            if identity in out:
                line = f"pods {out[identity][0]} and {key} are both {identity}: {out[identity][0]} is used"
                if line not in self._told and len(self._told) < MAX_REPORTED:
                    self._told.add(line)
                    self._report(line)
                continue
            out[identity] = (key, value)
        return [value for _, value in out.values()]

    def __len__(self) -> int:
        return len(self._values)

    def _report(self, line: str) -> None:
        if len(self._problems) < MAX_REPORTED:
            self._problems.append(line)

    def take_problems(self) -> list[str]:
        """What was skipped since the last call (for the shell to log)."""
        out, self._problems = self._problems, []
        return out


class WatchLines:
    """A watch stream cut into events (one JSON object a line), each bounded in size."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines in `data` plus what came before; ApiError when one grows too long."""
        self._buffer += data
        if b"\n" not in data:  # most chunks of a large event: only the bound to check
            if len(self._buffer) > self.max_line:
                raise ApiError(f"a watch event is longer than {self.max_line} bytes")
            return []
        *lines, rest = self._buffer.split(b"\n")
        if len(rest) > self.max_line:
            raise ApiError(f"a watch event is longer than {self.max_line} bytes")
        self._buffer = bytearray(rest)
        out = []
        for line in lines:
            if len(line) > self.max_line:
                raise ApiError(f"a watch event is longer than {self.max_line} bytes")
            if line.strip():
                out.append(bytes(line))
        return out
