"""deploy/README.md's walk "From an empty cluster to two trainers sharing one teacher", as a cluster sees it.

The walk's bash block is read line by line, in order, and replayed against a model of the cluster:
`kubectl create namespace` and `kubectl -n NS create secret generic NAME` add to it; every
`kubectl apply -k PATH` renders PATH (`kubectl kustomize`), validates it (Kubernetes schema), and needs
its namespaces and the Secrets its pods require to exist by then (optional ones, such as the Hugging
Face token, may be absent); every `kubectl -n NS wait|rollout status KIND/NAME` must name a resource
applied before. Nothing is applied to a real cluster.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from tests.deploy.k8s_render import ROOT, Rendered, namespace_of, render, secret_refs, validate, workloads

README = ROOT / "deploy" / "README.md"
WALK = "### From an empty cluster to two trainers sharing one teacher"
KINDS = {"job": "Job", "deployment": "Deployment", "statefulset": "StatefulSet"}


def walk_commands() -> list[list[str]]:
    """The walk's first bash block, one command per line (comments and blank lines dropped)."""
    text = README.read_text()
    section = text[text.index(WALK) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the walk has a bash block"
    lines = [line.split(" #")[0].strip() for line in block.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def _namespace(words: list[str]) -> str | None:
    return words[words.index("-n") + 1] if "-n" in words else None


@dataclass
class Cluster:
    namespaces: set[str] = field(default_factory=set)
    secrets: set[tuple[str, str]] = field(default_factory=set)
    applied: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # (namespace, kind, name)

    def apply(self, resources: Rendered) -> list[str]:
        problems = []
        for (kind, name), resource in resources.items():
            namespace = namespace_of(resource)
            if namespace is None or namespace not in self.namespaces:
                problems.append(f"{kind}/{name}: namespace {namespace} not created before")
            self.applied[namespace or "", kind, name] = resource
            if kind == "Secret":
                self.secrets.add((namespace or "", name))
        for (kind, name), workload in workloads(resources):
            namespace = namespace_of(workload) or ""
            for secret, optional in secret_refs(workload):
                if not optional and (namespace, secret) not in self.secrets:
                    problems.append(f"{kind}/{name}: Secret {namespace}/{secret} not created before")
        return problems


def replay(commands: list[list[str]]) -> tuple[Cluster, list[str]]:
    cluster, problems, applies = Cluster(), [], 0
    for words in commands:
        if words[0] != "kubectl":
            continue
        namespace = _namespace(words)
        verbs = [w for i, w in enumerate(words[1:], 1) if not w.startswith("-") and words[i - 1] != "-n"]
        if verbs[:2] == ["create", "namespace"]:
            cluster.namespaces.add(verbs[2])
        elif verbs[:3] == ["create", "secret", "generic"]:
            cluster.secrets.add((namespace or "", verbs[3]))
        elif verbs[0] == "apply":
            resources = render(ROOT / words[words.index("-k") + 1])
            validate(resources)
            problems += cluster.apply(resources)
            applies += 1
        elif verbs[0] in ("wait", "rollout"):
            kind, _, name = verbs[-1].partition("/")
            if (namespace or "", KINDS[kind], name) not in cluster.applied:
                problems.append(f"{' '.join(words)}: no {kind}/{name} in {namespace}")
    assert applies >= 3, "the services and two trainers"
    return cluster, problems


def test_the_walk_applies_in_order() -> None:
    cluster, problems = replay(walk_commands())
    assert problems == []
    trainers = [key for key in cluster.applied if key[1:] == ("Job", "rcsd-trainer")]
    assert len(trainers) == 2, "two trainers"
    teachers = [key for key in cluster.applied if key[1:] == ("Deployment", "rcsd-teacher")]
    assert len(teachers) == 1, "one teacher, shared"


def test_the_replay_catches_a_missing_secret() -> None:
    commands = [c for c in walk_commands() if not ("train-opsd" in c and "secret" in c)]
    _, problems = replay(commands)
    assert problems == ["Job/rcsd-trainer: Secret train-opsd/rcsd-api-key not created before"]
