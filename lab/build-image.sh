#!/usr/bin/env bash
# Build the Debian 12 base image that the lab and the molecule scenarios run
# as hosts, from Debian's packages alone (no image registry is needed).
#
# The image is tagged localhost/tradeops-debian12:latest and labelled with a
# hash of this script. A second run finds the label, prints the tag and does
# nothing else; edit the package lists below and the next run rebuilds.
#
# Usage: lab/build-image.sh [--force]
set -euo pipefail
umask 022

readonly IMAGE=localhost/tradeops-debian12:latest
readonly SUITE=bookworm
readonly MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# Installed by debootstrap: what Ansible and the jobs need on every host.
readonly BASE_PACKAGES=python3,python3-apt,cron,logrotate,procps,sudo,tini,gzip,zstd,pigz,acl,ca-certificates,less
# Installed afterwards in the chroot, with service starts disabled: the
# PostgreSQL 15 server and client, and the driver the modules use. The
# roles install the same packages again, so hosts converge in seconds.
# exim4 and bsd-mailx deliver alert mail to local mailboxes; matplotlib
# draws the weekly report's charts.
readonly EXTRA_PACKAGES=(postgresql-15 postgresql-client-15 python3-psycopg2 exim4-daemon-light bsd-mailx curl
    python3-matplotlib)

here=$(cd "$(dirname "$0")" && pwd)
recipe_hash=$(sha256sum "$here/build-image.sh" | cut -c1-16)

if [[ ${1:-} != --force ]] && podman image exists "$IMAGE"; then
    current=$(podman image inspect --format '{{ index .Labels "org.tradeops.recipe" }}' "$IMAGE")
    if [[ $current == "$recipe_hash" ]]; then
        echo "$IMAGE is up to date (recipe $recipe_hash)"
        exit 0
    fi
fi

for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed; run: apt-get install debootstrap podman runc" >&2; exit 1; }
done

rootfs=$(mktemp -d /var/tmp/tradeops-rootfs.XXXXXX)
# mktemp makes the directory 0700; as the image's / it would lock every
# user but root out of the whole file system.
chmod 0755 "$rootfs"
cleanup() {
    # The chroot may still have /proc mounted if a step failed.
    umount -l "$rootfs/proc" 2>/dev/null || true
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

echo "building $IMAGE (recipe $recipe_hash) in $rootfs"
debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >/dev/null

printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${EXTRA_PACKAGES[@]}" >/dev/null
umount "$rootfs/proc"
rm -f "$rootfs/usr/sbin/policy-rc.d"
# The package lists stay, so apt on a host needs no download to
# confirm that a package is installed.
chroot "$rootfs" apt-get clean

# tini as PID 1 reaps the orphans that cron and the jobs leave behind.
tar -C "$rootfs" -c . | podman import \
    --change 'CMD ["/usr/bin/tini", "--", "sleep", "infinity"]' \
    --change "LABEL org.tradeops.recipe=$recipe_hash" \
    - "$IMAGE" >/dev/null
echo "built $IMAGE (recipe $recipe_hash)"
