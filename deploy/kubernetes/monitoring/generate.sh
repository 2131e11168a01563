#!/bin/sh
# Writes the two generated resources of this directory from the files they copy, so that each
# exists once in the repository:
#   prometheusrule.yaml      the PrometheusRule of the Prometheus Operator, from
#                            deploy/prometheus/rules/finovy-alerts.yml (the one rules file that
#                            promtool checks and tests);
#   grafana-dashboard.yaml   a ConfigMap for Grafana's dashboard sidecar (label
#                            grafana_dashboard: "1"), from grafana/dashboards/finovy-images.json.
#
#   deploy/kubernetes/monitoring/generate.sh                 # rewrite both files
#   deploy/kubernetes/monitoring/generate.sh rule -          # print the PrometheusRule
#   deploy/kubernetes/monitoring/generate.sh dashboard -     # print the ConfigMap
#
# A PrometheusRule's `spec` has the same schema as a Prometheus rules file, and a ConfigMap's
# value may be a block scalar: both sources are copied as they are, indented. Kustomize cannot
# read them itself (a kustomization may not load files outside its directory).
# tests/deploy_files.rs fails when a committed file differs from what this prints.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rules="$here/../../prometheus/rules/finovy-alerts.yml"
dashboard="$here/../../../grafana/dashboards/finovy-images.json"

rule() {
  cat <<'HEADER'
# GENERATED from deploy/prometheus/rules/finovy-alerts.yml by generate.sh.
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

dashboard() {
  cat <<'HEADER'
# GENERATED from grafana/dashboards/finovy-images.json by generate.sh.
# Do not edit: edit the dashboard and run the script.
#
# Grafana's dashboard sidecar (kube-prometheus-stack: grafana.sidecar.dashboards.enabled) loads
# every ConfigMap with the label grafana_dashboard: "1" from the namespaces it searches
# (grafana.sidecar.dashboards.searchNamespace: ALL, or the exporter's namespace).
apiVersion: v1
kind: ConfigMap
metadata:
  name: finovy-image-exporter-dashboard
  labels:
    grafana_dashboard: "1"
data:
  finovy-images.json: |-
HEADER
  sed -e 's/^/    /' "$dashboard"
}

write() {
  "$1" >"$2.tmp"
  mv "$2.tmp" "$2"
}

case "${1:-all}" in
  all)
    write rule "$here/prometheusrule.yaml"
    write dashboard "$here/grafana-dashboard.yaml"
    ;;
  rule | dashboard)
    if [ "${2:-}" != "-" ]; then
      echo "usage: $0 [rule -|dashboard -]" >&2
      exit 2
    fi
    "$1"
    ;;
  *)
    echo "usage: $0 [rule -|dashboard -]" >&2
    exit 2
    ;;
esac
