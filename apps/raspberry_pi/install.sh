#!/usr/bin/env bash
# Install the edgevit camera app on Raspberry Pi OS (64-bit, Bookworm or later) as a systemd service.
#
#   sudo ./install.sh [--model PATH] [--source picamera|camera:N|FILE] [--host ADDR] [--port N]
#                     [--with-opencv] [--no-apt] [--no-service]
#
# What it does:
#   1. apt: python3-venv and python3-picamera2 (libcamera's Python bindings only come from apt),
#      plus python3-opencv with --with-opencv (USB cameras, video files).
#   2. a venv in $PREFIX/venv created with --system-site-packages, so the apt picamera2 is visible;
#      pip installs edgevit[tflite] (the torch-free runtime + ai-edge-litert) and this app.
#   3. a system user 'edgevit' in the video group, /etc/default/edgevit-camera with the options,
#      and the edgevit-camera.service unit, enabled and started when a model is in place.
#
# Environment: PREFIX (default /opt/edgevit); EDGEVIT_SPEC, the pip requirement for edgevit
# (default: the checkout this script lives in, with the [tflite] extra; e.g. EDGEVIT_SPEC='edgevit[tflite]'
# for the release from PyPI).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PREFIX="${PREFIX:-/opt/edgevit}"
if [[ -z "${EDGEVIT_SPEC:-}" ]]; then
    if [[ -f "$REPO/pyproject.toml" ]] && grep -q '^name = "edgevit"' "$REPO/pyproject.toml"; then
        EDGEVIT_SPEC="${REPO}[tflite]"
    else
        EDGEVIT_SPEC="edgevit[tflite]"
    fi
fi
MODEL=""
SOURCE="picamera"
HOST="127.0.0.1"
PORT="8080"
APT=1
SERVICE=1
OPENCV=0

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --source) SOURCE="$2"; shift 2 ;;
        --host) HOST="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --with-opencv) OPENCV=1; shift ;;
        --no-apt) APT=0; shift ;;
        --no-service) SERVICE=0; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

if [[ $APT -eq 1 || $SERVICE -eq 1 ]] && [[ $(id -u) -ne 0 ]]; then
    die "run as root (sudo ./install.sh), or pass --no-apt --no-service for a user-level venv"
fi
case "$(uname -m)" in
    aarch64|x86_64) ;;
    armv7l|armv6l) die "32-bit Raspberry Pi OS is not supported: ai-edge-litert ships 64-bit wheels only; install Raspberry Pi OS (64-bit)" ;;
    *) echo "install.sh: warning: untested architecture $(uname -m)" >&2 ;;
esac
if [[ -n "$MODEL" && ! -f "$MODEL" ]]; then
    die "--model $MODEL: no such file (export one with: edgevit export MODEL --target tflite)"
fi

if [[ $APT -eq 1 ]]; then
    say "apt: python3-venv python3-picamera2$([[ $OPENCV -eq 1 ]] && echo ' python3-opencv')"
    apt-get update
    pkgs=(python3-venv python3-picamera2)
    [[ $OPENCV -eq 1 ]] && pkgs+=(python3-opencv)
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}"
fi

say "venv: $PREFIX/venv (--system-site-packages, for the apt picamera2)"
mkdir -p "$PREFIX/models"
python3 -m venv --system-site-packages "$PREFIX/venv"
PY="$PREFIX/venv/bin/python"
"$PY" -m pip install --upgrade pip
say "pip: $EDGEVIT_SPEC and the camera app"
"$PY" -m pip install "$EDGEVIT_SPEC"
"$PY" -m pip install "$HERE"
cp "$HERE/README.md" "$PREFIX/README.md"

say "checking the installation"
"$PY" - <<'PYCHECK'
import importlib, sys
import edgevit_pi, edgevit.runtimes  # noqa: F401
for banned in ("torch", "timm"):
    if banned in sys.modules:
        sys.exit(f"{banned} was imported by the device app")
import ai_edge_litert.interpreter  # noqa: F401  (the [tflite] extra)
print("TFLite interpreter (ai-edge-litert): ok")
try:
    importlib.import_module("picamera2")
    print("picamera2: ok")
except ImportError as exc:
    print(f"picamera2: not importable ({exc}); the Pi camera source will not work", file=sys.stderr)
PYCHECK

if [[ -n "$MODEL" ]]; then
    MODEL_DEST="$PREFIX/models/$(basename "$MODEL")"
    cp "$MODEL" "$MODEL_DEST"
else
    MODEL_DEST="$PREFIX/models/model.tflite"
fi

if [[ $SERVICE -eq 0 ]]; then
    say "done (no service). Run: $PY -m edgevit_pi $MODEL_DEST --source $SOURCE --host $HOST --port $PORT"
    exit 0
fi

say "service user 'edgevit' (group video)"
if ! id edgevit >/dev/null 2>&1; then
    useradd --system --home-dir "$PREFIX" --no-create-home --shell /usr/sbin/nologin --groups video edgevit
else
    usermod -a -G video edgevit
fi
chown -R root:root "$PREFIX"
chmod -R a+rX "$PREFIX"

DEFAULTS=/etc/default/edgevit-camera
if [[ ! -f "$DEFAULTS" ]]; then
    say "options: $DEFAULTS"
    cat > "$DEFAULTS" <<EOF
# Options of the edgevit camera service (see $PREFIX/README.md); restart it after editing:
#   sudo systemctl restart edgevit-camera
EDGEVIT_MODEL=$MODEL_DEST
EDGEVIT_ARGS=--source $SOURCE --host $HOST --port $PORT --top-k 3
EOF
else
    say "keeping the existing $DEFAULTS"
fi

say "unit: /etc/systemd/system/edgevit-camera.service"
sed "s#/opt/edgevit#$PREFIX#g" "$HERE/edgevit-camera.service" > /etc/systemd/system/edgevit-camera.service
systemctl daemon-reload
systemctl enable edgevit-camera.service
if [[ -f "$MODEL_DEST" ]]; then
    systemctl restart edgevit-camera.service
    say "started; view it at http://$HOST:$PORT/ (logs: journalctl -u edgevit-camera -f)"
else
    say "enabled but not started: copy a model to $MODEL_DEST, then: sudo systemctl start edgevit-camera"
fi
