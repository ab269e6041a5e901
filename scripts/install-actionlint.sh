#!/usr/bin/env bash
# Installs the pinned actionlint into build/bin from the Go module proxy; tests/ci lints .github/workflows with it.
# Needs Go 1.21 or newer (it fetches the toolchain actionlint asks for from the module proxy by itself).
set -euo pipefail
cd "$(dirname "$0")/.."

ACTIONLINT_VERSION=v1.7.12
BIN_DIR="$PWD/build/bin"

if [ -x "$BIN_DIR/actionlint" ] && [ "$("$BIN_DIR/actionlint" -version | head -n 1)" = "$ACTIONLINT_VERSION" ]; then
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "install-actionlint: Go is needed to install actionlint $ACTIONLINT_VERSION (apt-get install golang-go)" >&2
    exit 1
fi
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [ "$go_minor" -lt 21 ] 2>/dev/null; then
    echo "install-actionlint: Go $(go env GOVERSION) cannot fetch the toolchain actionlint needs; install Go 1.21+" >&2
    exit 1
fi
mkdir -p "$BIN_DIR"
GOBIN="$BIN_DIR" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
"$BIN_DIR/actionlint" -version | head -n 1
