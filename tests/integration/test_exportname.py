#!/usr/bin/python3
"""The exportname filter through real clients, over file dir=: nbdinfo
--list shows the same names as nbdkit's exportname filter for the keep,
empty and explicit modes (skipped without nbdkit), and the expected ones
here; error fails the listing; exportdesc fixed and script set the
descriptions; exportname-strict refuses other names while a listed one
opens; default-export serves "" as file2, as nbdkit; bad values are refused with FILE:LINE."""

import json
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402
import opsfilters as O                    # noqa: E402

try:
    import nbd                            # noqa: F401
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("exportname", "file")
T.start_watchdog(120)
C = Checker("test_exportname")
servers = []
DIR = os.path.join(T.TMPDIR, "dir")
os.mkdir(DIR)
for n, size in (("file1", 4096), ("file2", 8192), ("file3", 512)):
    with open(os.path.join(DIR, n), "wb") as f:
        f.truncate(size)


def listing(uri):
    """(names, descriptions) of nbdinfo --list --json, or None when it
    fails."""
    r = subprocess.run(["nbdinfo", "--list", "--json", uri],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return None
    ex = json.loads(r.stdout)["exports"]
    return (sorted(e["export-name"] for e in ex),
            {e["export-name"]: e.get("description") for e in ex})


MODES = [
    ([], ["file1", "file2", "file3"]),
    (["exportname-list=empty"], []),
    (["exportname-list=explicit", "exportname=file3", "exportname=file1"],
     ["file1", "file3"]),
]


def list_modes():
    for i, (keys, want) in enumerate(MODES):
        srv = Server(["--filter", "exportname", "file", "dir=" + DIR] + keys,
                     name="list")
        servers.append(srv)
        got = listing(srv.uri)
        check(got is not None, "%s: listing failed" % keys)
        if got:
            check_eq(got[0], want, "%s: names" % keys)
        if O.have_nbdkit_filter("exportname"):
            with O.nbdkit(["--filter=exportname", "file", "dir=" + DIR] +
                          keys, "en%d" % i) as k:
                theirs = listing(k)
                check(theirs is not None and got is not None and
                      theirs[0] == got[0], "%s: nbdkit lists %s, we %s"
                      % (keys, theirs and theirs[0], got and got[0]))
        srv.stop()
    srv = Server(["--filter", "exportname", "file", "dir=" + DIR,
                  "exportname-list=error"], name="err")
    servers.append(srv)
    check(listing(srv.uri) is None, "exportname-list=error: listing worked")
    srv.stop()


def descriptions():
    srv = Server(["--filter", "exportname", "file", "dir=" + DIR,
                  "exportdesc=fixed:a disk"], name="fixed")
    servers.append(srv)
    got = listing(srv.uri)
    check(got is not None and got[1].get("file2") == "a disk",
          "fixed description: %s" % (got,))
    srv.stop()
    srv = Server(["--filter", "exportname", "file", "dir=" + DIR,
                  "exportdesc=script:wc -c < %s/$name" % DIR], name="script")
    servers.append(srv)
    got = listing(srv.uri)
    check(got is not None and got[1].get("file2", "").strip() == "8192",
          "script description: %s" % (got,))
    srv.stop()


def strict():
    srv = Server(["--filter", "exportname", "file", "dir=" + DIR,
                  "exportname-strict=true", "exportname=file1"],
                 name="strict")
    servers.append(srv)
    h = O.connect(srv.uri_for("file1"))
    check_eq(h.get_size(), 4096, "file1 opens")
    h.shutdown()
    import nbd
    h = nbd.NBD()
    try:
        h.connect_uri(srv.uri_for("file2"))
        check(False, "file2 opened under exportname-strict")
    except nbd.Error:
        pass
    srv.stop()


def opens(uri):
    """Whether a client can open uri."""
    import nbd
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
    except nbd.Error:
        return False
    h.shutdown()
    return True


def description(uri):
    """NBD_INFO_DESCRIPTION of the export uri opens (None: not sent)."""
    import nbd
    h = nbd.NBD()
    h.set_full_info(True)
    h.connect_uri(uri)
    try:
        return h.get_export_description()
    except nbd.Error:
        return None
    finally:
        h.shutdown()


def description_on_open():
    # exportdesc is sent with the export too (NBD_INFO_DESCRIPTION, what
    # nbdinfo prints as "description"), not only in the listing; with
    # nbdkit's name for the script: default-export applied.
    cases = [(["exportdesc=fixed:a disk"], "file1", "a disk"),
             (["exportdesc=script:echo is-$name", "default-export=file2"],
              "", "is-file2"),
             (["exportdesc=script:echo is-$name"], "file3", "is-file3"),
             (["exportdesc=none"], "file1", None)]
    for i, (keys, name, want) in enumerate(cases):
        srv = Server(["--filter", "exportname", "file", "dir=" + DIR] + keys,
                     name="desc%d" % i)
        servers.append(srv)
        check_eq(description(srv.uri_for(name)), want, "%s, %r" % (keys, name))
        srv.stop()
        if O.have_nbdkit_filter("exportname"):
            with O.nbdkit(["--filter=exportname", "file", "dir=" + DIR] +
                          keys, "endesc%d" % i) as k:
                sock = k[k.index("socket=") + 7:]
                check_eq(description("nbd+unix:///%s?socket=%s" % (name, sock)),
                         want, "nbdkit: %s, %r" % (keys, name))


def strict_default():
    # exportname-strict checks the name the client asked for, as nbdkit:
    # "" is refused unless "" itself is listed, default-export or not.
    keys = ["default-export=file2", "exportname-strict=true",
            "exportname=file2"]
    srv = Server(["--filter", "exportname", "file", "dir=" + DIR] + keys,
                 name="strictdef")
    servers.append(srv)
    check(opens(srv.uri_for("file2")), "file2 refused")
    check(not opens(srv.uri), '"" opened under exportname-strict')
    srv.stop()
    if O.have_nbdkit_filter("exportname"):
        with O.nbdkit(["--filter=exportname", "file", "dir=" + DIR] + keys,
                      "enstrict") as k:
            check(not opens(k), 'nbdkit: "" opened under exportname-strict')
    srv = Server(["--filter", "exportname", "file", "dir=" + DIR] + keys +
                 ["exportname="], name="strictdef2")
    servers.append(srv)
    h = O.connect(srv.uri)
    check_eq(h.get_size(), 8192, '"" listed: opens file2')
    h.shutdown()
    srv.stop()


def default_export():
    keys = ["default-export=file2"]
    srv = Server(["--filter", "exportname", "file", "dir=" + DIR] + keys,
                 name="default")
    servers.append(srv)
    h = O.connect(srv.uri)
    check_eq(h.get_size(), 8192, '"" opens file2')
    h.shutdown()
    h = O.connect(srv.uri_for("file3"))
    check_eq(h.get_size(), 512, "file3 is still file3")
    h.shutdown()
    # the canonical name (NBD_INFO_NAME) is the one served, as nbdkit's
    r = subprocess.run(["nbdinfo", "--json", srv.uri], capture_output=True,
                       text=True, timeout=30)
    check_eq(json.loads(r.stdout)["exports"][0]["export-name"], "file2",
             'canonical name of ""')
    if O.have_nbdkit_filter("exportname"):
        with O.nbdkit(["--filter=exportname", "file", "dir=" + DIR] + keys,
                      "endef") as k:
            hk = O.connect(k)
            check_eq(hk.get_size(), 8192, 'nbdkit: "" opens file2')
            hk.shutdown()
    srv.stop()


def bad_values_refused():
    O.config_refused("exportname exportdesc=fancy", "exportdesc")
    O.config_refused("exportname exportname-list=all", "exportname-list")
    O.config_refused("exportname exportname-strict=true",
                     "exportname-strict")
    O.config_refused("exportname default-export", "default-export")
    O.config_accepted("exportname exportname=a exportname-list=explicit")


C.run("nbdinfo --list per mode, as nbdkit", list_modes)
C.run("exportdesc fixed: and script:", descriptions)
C.run("exportname-strict refuses other names", strict)
C.run("default-export serves \"\" as another name", default_export)
C.run("exportdesc sent with the opened export (NBD_INFO_DESCRIPTION)",
      description_on_open)
C.run("exportname-strict checks the asked name, before default-export",
      strict_default)
C.run("bad values are refused with FILE:LINE", bad_values_refused)
C.finish(servers)
