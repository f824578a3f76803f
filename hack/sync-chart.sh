#!/usr/bin/env bash
# Copies what controller-gen generates into the chart, so the chart never
# drifts from config/: the CRD (wrapped in crd.enabled / crd.keep) and the
# manager's RBAC rules. `make manifests` runs it; the chart tests check it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
chart="$root/charts/comet-operator"

{
	echo '{{- if .Values.crd.enabled }}'
	echo '# Generated from config/crd by hack/sync-chart.sh: do not edit.'
	sed -e '/^---$/d' \
		-e 's/^  annotations:$/  annotations:\n    {{- if .Values.crd.keep }}\n    helm.sh\/resource-policy: keep\n    {{- end }}/' \
		-e 's/^  name: \(.*\)$/  name: \1\n  labels:\n    {{- include "comet-operator.labels" . | nindent 4 }}/' \
		"$root"/config/crd/bases/comet.cometop.dev_cometservers.yaml
	echo '{{- end }}'
} >"$chart/templates/crd.yaml"

{
	echo '# Generated from config/rbac/role.yaml by hack/sync-chart.sh: do not edit.'
	sed -n '/^rules:$/,$p' "$root/config/rbac/role.yaml" | sed '1d'
} >"$chart/files/manager-rules.yaml"
