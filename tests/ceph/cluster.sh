#!/usr/bin/env bash
# A single-node Ceph cluster for the s3 backend's tests: one monitor, one
# memstore OSD, no mgr, and radosgw (beast) on 127.0.0.1, all under DIR,
# no systemd, containers or cephadm.  Daemons' pids go to DIR/pids.
#
#   cluster.sh start DIR [RGW_PORT]   prints "endpoint=... access=... secret=...";
#                                     https on RGW_PORT+1 (CA: DIR/ca.pem)
#   cluster.sh stop DIR               stops the daemons by their pids
#   cluster.sh stop-rgw DIR / start-rgw DIR   the gateway alone
#
# The monitor's port is fixed (one cluster per host: the tests hold the
# CTest resource lock "ceph").  On failure it prints the logs and exits 1.
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop|stop-rgw|start-rgw DIR [PORT]}
dir=${2:?usage: cluster.sh start|stop DIR [PORT]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
export CEPH_CONF=$conf
ACCESS=nbdstacktestaccess
SECRET=nbdstacktestsecret0123456789abcdefghijkl
MON_PORT=${CEPH_MON_PORT:-46789}

die() {
  echo "cluster.sh: $*" >&2
  for f in "$dir"/log/*.log "$dir"/*.out; do
    [ -f "$f" ] || continue
    echo "---- $f (last 40 lines)" >&2
    tail -n 40 "$f" >&2
  done
  stop_all
  exit 1
}

stop_pid() {  # name
  local f=$dir/pids/$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_all() {
  stop_pid rgw
  stop_pid osd
  stop_pid mon
}

ceph_cmd() { timeout 30 ceph --conf "$conf" --connect-timeout 10 "$@"; }

start_rgw() {
  local port
  port=$(cat "$dir/rgw_port")
  radosgw -f --conf "$conf" -n client.rgw --keyring "$dir/keyring" \
    >"$dir/rgw.out" 2>&1 &
  echo $! >"$dir/pids/rgw"
  for i in $(seq 1 600); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null ||
       python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; then
      return 0
    fi
    kill -0 "$(cat "$dir/pids/rgw")" 2>/dev/null || die "radosgw exited"
    sleep 0.1
  done
  die "radosgw did not listen on 127.0.0.1:$port within 60 s"
}

case "$cmd" in
start)
  port=${3:-47480}
  for p in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool; do
    command -v "$p" >/dev/null || die "$p not installed (apt-get install ceph-mon ceph-osd radosgw ceph-common)"
  done
  mkdir -p "$dir/mon" "$dir/osd" "$dir/log" "$dir/run" "$dir/pids" "$dir/rgw"
  echo "$port" >"$dir/rgw_port"
  # A certificate for the gateway's https endpoint (PORT+1), signed by a
  # CA of its own (DIR/ca.pem) for tls-ca= tests.
  tls_port=$((port + 1))
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=nbdstack-test-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" >/dev/null 2>&1 || die "openssl: CA"
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$dir/rgw.key" \
    -out "$dir/rgw.csr" >/dev/null 2>&1 || die "openssl: key"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/rgw.ext"
  openssl x509 -req -in "$dir/rgw.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/rgw.ext" -out "$dir/rgw.crt" \
    >/dev/null 2>&1 || die "openssl: certificate"
  cat "$dir/rgw.crt" "$dir/rgw.key" >"$dir/rgw.pem"
  fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = 127.0.0.1:$MON_PORT
mon initial members = a
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/keyring
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
run dir = $dir/run
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = memstore
memstore device bytes = 2147483648
osd memory target = 268435456
osd data = $dir/osd
osd journal size = 0
osd max object name len = 256
osd max object namespace len = 64
rgw frontends = beast endpoint=127.0.0.1:$port ssl_endpoint=127.0.0.1:$tls_port ssl_certificate=$dir/rgw.pem
rgw data = $dir/rgw
rgw dns name = localhost
rgw enable usage log = false
rgw thread pool size = 64
[mon.a]
mon data = $dir/mon
mon addr = 127.0.0.1:$MON_PORT
CONF
  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$dir/keyring" --gen-key -n client.admin --cap mon 'allow *' \
    --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$dir/keyring" --gen-key -n client.rgw --cap mon 'allow rw' \
    --cap osd 'allow rwx' >/dev/null
  monmaptool --create --clobber --fsid "$fsid" --add a "127.0.0.1:$MON_PORT" \
    "$dir/monmap" >/dev/null
  ceph-mon --conf "$conf" --mkfs -i a --monmap "$dir/monmap" \
    --keyring "$dir/keyring" >"$dir/mon-mkfs.out" 2>&1 || die "ceph-mon --mkfs failed"
  ceph-mon --conf "$conf" -f -i a >"$dir/mon.out" 2>&1 &
  echo $! >"$dir/pids/mon"
  for i in $(seq 1 60); do
    ceph_cmd -s >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/pids/mon")" 2>/dev/null || die "ceph-mon exited"
    [ "$i" = 60 ] && die "the monitor did not answer within 60 s"
    sleep 1
  done
  osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  osd_id=$(ceph_cmd osd new "$osd_uuid") ||
    die "ceph osd new failed"
  ceph_cmd auth get-or-create "osd.$osd_id" mon 'allow profile osd' \
    mgr 'allow profile osd' osd 'allow *' >"$dir/osd/keyring" || die "osd key"
  ceph-osd --conf "$conf" -i "$osd_id" --mkfs --osd-objectstore memstore --osd-uuid "$osd_uuid" \
    --osd-data "$dir/osd" --keyring "$dir/osd/keyring" \
    >"$dir/osd-mkfs.out" 2>&1 || die "ceph-osd --mkfs failed"
  ceph-osd --conf "$conf" -f -i "$osd_id" --osd-data "$dir/osd" \
    --keyring "$dir/osd/keyring" >"$dir/osd.out" 2>&1 &
  echo $! >"$dir/pids/osd"
  for i in $(seq 1 ${CEPH_OSD_WAIT:-120}); do
    ceph_cmd osd stat 2>/dev/null | grep -q "1 up" && break
    kill -0 "$(cat "$dir/pids/osd")" 2>/dev/null || die "ceph-osd exited"
    [ "$i" = 120 ] && die "the OSD did not come up within 120 s"
    sleep 1
  done
  start_rgw
  radosgw-admin --conf "$conf" -n client.admin user create --uid=nbdtest \
    --display-name="nbdstack test" --access-key="$ACCESS" --secret-key="$SECRET" \
    >"$dir/user.out" 2>&1 || die "radosgw-admin user create failed"
  echo "endpoint=http://127.0.0.1:$port access=$ACCESS secret=$SECRET"
  ;;
stop)
  stop_all
  ;;
stop-rgw)
  stop_pid rgw
  ;;
start-rgw)
  start_rgw
  ;;
*)
  echo "usage: cluster.sh start|stop|stop-rgw|start-rgw DIR [PORT]" >&2
  exit 2
  ;;
esac
