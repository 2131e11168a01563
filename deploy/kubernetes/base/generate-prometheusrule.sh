#!/bin/sh
# Writes prometheusrule.yaml, the PrometheusRule resource of the Prometheus Operator, from the
# one rules file that promtool checks and tests: deploy/prometheus/rules/finovy-alerts.yml.
#
#   deploy/kubernetes/base/generate-prometheusrule.sh        # rewrite prometheusrule.yaml
#   deploy/kubernetes/base/generate-prometheusrule.sh -      # print it instead
#
# A PrometheusRule's `spec` has the same schema as a Prometheus rules file, so the file is
# copied under `spec:` as it is, indented. tests/deploy_files.rs fails when the committed
# resource differs from what this prints, and checks the rules it holds with promtool.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rules="$here/../../prometheus/rules/finovy-alerts.yml"
out="${1:-$here/prometheusrule.yaml}"

generate() {
  cat <<'HEADER'
# GENERATED from deploy/prometheus/rules/finovy-alerts.yml by generate-prometheusrule.sh.
# Do not edit: edit the rules file and run the script.
#
# Needs the Prometheus Operator. Its labels must match your Prometheus' ruleSelector
# (kube-prometheus-stack: `release: <helm release>`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: finovy-image-exporter
spec:
HEADER
  # Every line indented by two spaces, comments included: block scalars (multi-line `expr`)
  # keep their content unchanged.
  sed -e 's/^\(.\)/  \1/' "$rules"
}

if [ "$out" = "-" ]; then
  generate
else
  generate >"$out.tmp"
  mv "$out.tmp" "$out"
fi
