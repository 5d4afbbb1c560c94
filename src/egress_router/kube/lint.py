"""`egress-router lint FILE...`: what in existing Pod/Deployment/ConfigMap/Service YAML would
break the router, as `FILE:LINE: message` lines. Exit 0 when clean, 1 with findings, 2 when a
file cannot be read.

All files are read first: a ConfigMap or Service in one file is matched with the Pod of another.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import yaml

from ..errors import ConfigError, Problem
from . import nodes
from .checks import Finding, Workload, check_container, check_service
from .nodes import Document
from .resolve import ConfigMaps
from .usage import Parser, UsageError, report

# Where each kind keeps its pod template.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def workload(doc: Document) -> Workload | None:
    path = TEMPLATES.get(doc.kind)
    if path is None:
        return None
    template = doc.root
    for key in path:
        template = nodes.get(template, key)  # type: ignore[assignment]
    meta = nodes.get(template, "metadata")
    labels = {k: nodes.text(v) or "" for k, v in nodes.pairs(nodes.get(meta, "labels"))}
    return Workload(doc, meta, nodes.get(template, "spec"), labels)


def lint_documents(docs: list[Document]) -> list[Finding]:
    maps = ConfigMaps(docs)
    findings: list[Finding] = []
    workloads = []
    for doc in docs:
        w = workload(doc)
        if w is None:
            continue
        workloads.append(w)
        for section, init in (("initContainers", True), ("containers", False)):
            for container in nodes.items(nodes.get(w.spec, section)):
                findings += check_container(w, container, init, maps)
    for doc in docs:
        if doc.kind == "Service":
            findings += check_service(doc, workloads)
    return sorted(set(findings))


def lint_texts(files: list[tuple[str, str]]) -> list[Finding]:
    docs: list[Document] = []
    findings: list[Finding] = []
    for path, text in files:
        try:
            docs += nodes.load(path, text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = mark.line + 1 if mark is not None else 1
            problem = getattr(error, "problem", None) or str(error)
            findings.append(Finding(path, where, f"not valid YAML: {problem}"))
    return sorted(findings + lint_documents(docs))


def main(args: list[str], env: Mapping[str, str]) -> int:
    p = Parser(prog="egress-router lint", description="Find what would break the egress router in "
               "Pod, Deployment, ConfigMap and Service YAML (several documents per file are fine).")
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files; - for stdin")
    try:
        options = p.parse_args(args)
        files = [(path, _read(path)) for path in options.files]
    except (UsageError, ConfigError) as error:
        return report(error)
    findings = lint_texts(files)
    for finding in findings:
        sys.stdout.write(f"{finding}\n")
    return 1 if findings else 0


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError([Problem(path, f"cannot read: {reason}")]) from None
