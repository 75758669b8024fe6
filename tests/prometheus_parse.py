"""Reads Prometheus text exposition on stdin with the Prometheus project's Python parser and
prints one "name{labels} value" line per sample; exits non-zero if it does not parse."""
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(f"{sample.name}{{{labels}}} {sample.value}")
