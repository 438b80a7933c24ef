#!/bin/sh
# Make a local base image for the Dockerfile from Debian's package archive alone (no image
# registry needed), and import it into the local container storage (podman/buildah's, or
# docker's):
#
#   deploy/docker/debian-base.sh [IMAGE]          # default IMAGE: localhost/reprocodec-base:bookworm
#   scripts/build-image.sh cpu --base IMAGE
#
# The image is Debian 12 ("bookworm", Python 3.11) with python3, its venv module and CA
# certificates, which is all the Dockerfile needs from a base (the build stage adds a C compiler
# itself when it needs one). mmdebstrap takes the suite's mirror, updates and security
# sources from its defaults; set MMDEBSTRAP_MIRROR to use another mirror of the archive.
# Behind a TLS-intercepting proxy, list its CA certificates (PEM files named *.crt) in
# EXTRA_CA_CERTS: they join the image's trust store, and PIP_CERT points pip at that store (pip
# otherwise trusts only its own bundle), so the build stage can reach the package index.
# Run as root (mmdebstrap's root mode), e.g. in a CI job or a throwaway VM.
set -eu

image="${1:-localhost/reprocodec-base:bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
command -v mmdebstrap >/dev/null 2>&1 || {
    echo "debian-base.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2
    exit 1
}
tarball="$(mktemp -d)/rootfs.tar"
trap 'rm -rf "$(dirname "$tarball")"' EXIT

set --
env_change='ENV LANG=C.UTF-8'
for cert in ${EXTRA_CA_CERTS:-}; do
    case "$cert" in *.crt) ;; *) echo "debian-base.sh: $cert: CA files must end in .crt" >&2; exit 1 ;; esac
    set -- "$@" --customize-hook="copy-in $cert /usr/local/share/ca-certificates/"
done
if [ $# -gt 0 ]; then
    set -- "$@" --customize-hook='chroot "$1" update-ca-certificates'
    env_change="$env_change PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
fi

# minbase: Essential packages and apt (the build stage installs gcc through apt). Docs, man pages
# and locales are dropped: nothing in the image reads them.
# shellcheck disable=SC2086  # MMDEBSTRAP_MIRROR is deliberately word-split (zero or more args)
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --aptopt='Acquire::Languages "none"' "$@" \
    "$suite" "$tarball" ${MMDEBSTRAP_MIRROR:-}

if command -v podman >/dev/null 2>&1; then
    podman import --change 'CMD ["/bin/bash"]' --change "$env_change" "$tarball" "$image"
elif command -v buildah >/dev/null 2>&1; then
    ctr="$(buildah from scratch)"
    buildah add "$ctr" "$tarball" /
    buildah config --cmd '["/bin/bash"]' "$ctr"
    for kv in ${env_change#ENV }; do buildah config --env "$kv" "$ctr"; done
    buildah commit --rm "$ctr" "$image"
elif command -v docker >/dev/null 2>&1; then
    docker import --change 'CMD ["/bin/bash"]' --change "$env_change" "$tarball" "$image"
else
    echo "debian-base.sh: no podman, buildah or docker to import the image into" >&2
    exit 1
fi
echo "base image: $image"
