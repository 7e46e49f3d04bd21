#!/usr/bin/env bash
# The project's one test command: ./scripts/test.sh [extra cargo test args]
#
# The end-to-end tests drive smtpgate with real SMTP tools: Postfix's smtp-sink and
# smtp-source, swaks, and Python's smtplib, with real scanners: clamd and rspamd, and with a
# real milter: OpenDKIM, and the nodes' shared state against a real Redis. On a fresh Debian
# machine they are missing, so this script installs them first (as root, or through sudo), making
# sure no package leaves a daemon running (no postfix, clamd, freshclam, rspamd, opendkim or
# redis-server service: the tests start their own), then runs every test of the workspace.
#
# Between the two it runs the checks (`run_checks`: formatting, clippy, module layering); if one
# fails, the run fails without testing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Formatting, clippy with warnings as errors (in release, so it reuses the build scripts and proc
# macros the release test build compiles), and the module-layering check with its own tests. Each
# runs even when an earlier one failed, so one run shows every problem.
run_checks() {
    local failed=()
    cargo fmt --all -- --check || failed+=("cargo fmt --check")
    cargo clippy --workspace --all-targets --release -- -D warnings || failed+=("cargo clippy")
    python3 scripts/test_check_modules.py || failed+=("scripts/test_check_modules.py")
    python3 scripts/check-modules.py crates/smtpgate/src || failed+=("scripts/check-modules.py")
    if ((${#failed[@]} > 0)); then
        printf 'test.sh: check failed: %s\n' "${failed[@]}" >&2
        return 1
    fi
}

missing_packages() {
    [[ -x /usr/sbin/smtp-sink && -x /usr/sbin/smtp-source ]] || echo postfix
    command -v swaks >/dev/null 2>&1 || echo swaks
    command -v python3 >/dev/null 2>&1 || echo python3
    # External scanners for e2e_scanners.rs: the tests run them in the foreground themselves.
    [[ -x /usr/sbin/clamd ]] || echo clamav-daemon
    [[ -x /usr/bin/rspamd ]] || echo rspamd
    # A real milter for e2e_milter.rs (OpenDKIM signing; opendkim-genkey makes its key).
    [[ -x /usr/sbin/opendkim ]] || echo opendkim
    command -v opendkim-genkey >/dev/null 2>&1 || [[ -x /usr/sbin/opendkim-genkey ]] || echo opendkim-tools
    # Redis for shared.rs's tests: each test runs its own redis-server on a Unix socket.
    [[ -x /usr/bin/redis-server ]] || echo redis-server
    # The dashboard's browser test (e2e_dashboard.rs): Debian's Chromium, driven from Node.js.
    [[ -x /usr/bin/chromium ]] || echo chromium
    command -v node >/dev/null 2>&1 || echo nodejs
    command -v npm >/dev/null 2>&1 || echo npm
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "test.sh: need root (or sudo) to install: $*" >&2
        return 1
    fi
}

# Installs the named Debian packages without starting any service they ship:
# postfix is only wanted for its smtp-sink/smtp-source test programs, clamav-daemon,
# rspamd, opendkim and redis-server for their binaries.
install_packages() {
    local created_policy=no
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        created_policy=yes
    fi
    local status=0
    {
        echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections &&
            as_root apt-get update &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
    } || status=$?
    if [[ $created_policy == yes ]]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
    return "$status"
}

mapfile -t need < <(missing_packages)
if ((${#need[@]} > 0)); then
    echo "test.sh: installing test tools: ${need[*]}" >&2
    install_packages "${need[@]}"
    mapfile -t still < <(missing_packages)
    if ((${#still[@]} > 0)); then
        echo "test.sh: still missing after install: ${still[*]}" >&2
        exit 1
    fi
fi

# The DKIM tests check smtpgate's signatures with an independent verifier, Python's dkimpy
# (PyNaCl for Ed25519 keys).
if ! python3 -c "import dkim, nacl.signing" >/dev/null 2>&1; then
    echo "test.sh: installing dkimpy and pynacl for the DKIM tests" >&2
    python3 -m pip --version >/dev/null 2>&1 || install_packages python3-pip
    python3 -m pip install --quiet dkimpy pynacl ||
        python3 -m pip install --quiet --break-system-packages dkimpy pynacl
fi

# The SRS tests check smtpgate's addresses both ways against an independent implementation of
# libsrs2's format, Python's srslib.
if ! python3 -c "import srslib" >/dev/null 2>&1; then
    echo "test.sh: installing srslib for the SRS tests" >&2
    python3 -m pip --version >/dev/null 2>&1 || install_packages python3-pip
    python3 -m pip install --quiet srslib ||
        python3 -m pip install --quiet --break-system-packages srslib
fi

# playwright-core drives that Chromium (no browser download: it uses /usr/bin/chromium).
dashboard=crates/smtpgate/tests/dashboard
if [[ ! -d $dashboard/node_modules/playwright-core ]]; then
    echo "test.sh: installing playwright-core for the dashboard test" >&2
    (cd "$dashboard" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --quiet)
fi

run_checks
exec cargo test --release --workspace "$@"
