#!/usr/bin/env bash
# Chart, alert rule and Argo CD health check tests (needs the bootstrap's PATH:
# helm, promtool, lua5.4, and its Python).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source "${FERRY_CACHE:-$HOME/.cache/ferry}/services/env"
"$FERRY_PYTHON" tests/chart/check_chart.py
lua5.4 tests/argocd/test_health.lua
