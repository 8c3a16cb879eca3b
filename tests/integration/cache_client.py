"""NBD client jobs for test_cache.sh (run with /usr/bin/python3, libnbd).

  workload URI SEED IMAGE MODEL [--no-trim] [--check-extents]
      Random writes (some FUA), zeroes, trims, cache requests and reads on
      a disk whose starting content is IMAGE; every read is checked against
      a model kept here.  Ends with a FLUSH and a full read, and writes the
      model to MODEL.  With --check-extents, every extent the server calls
      zero must read as zeros in the model (dirty cached blocks included).
  crash URI SEED IMAGE MODEL MASK READY
      Several MiB of random writes (some FUA), FLUSH, then more writes
      (some FUA); writes the model and a mask (1 = the byte must be in the
      file even if the server dies now: written before the completed FLUSH
      or by a FUA write, and not overwritten since), creates READY and
      keeps the connection open until killed.
  writer URI SEED WRITER LOG
      Writes until the connection fails: write i of this writer goes to an
      offset and with bytes that writer_op(SEED, WRITER, i) gives; i is
      appended to LOG after the reply.
  verify-writers IMAGE FILE SEED LOG...
      The FILE must be IMAGE with every logged write applied in order; the
      write after each writer's last logged one may or may not be there.

Trim is modelled as zeroing: over the file backend the cache reads zeros
after a trim (blocks dropped, partial dirty blocks zeroed), and the test
checks this filter's behaviour, not the protocol's weakest promise.
"""

import os
import random
import sys
import time

KIB = 1024
MIB = 1024 * KIB


def connect(uri, extents=False):
    import nbd
    h = nbd.NBD()
    if extents:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def check(what, got, want):
    if got != want:
        first = next(i for i in range(min(len(got), len(want)))
                     if got[i] != want[i]) if len(got) == len(want) else -1
        sys.exit("%s: data differs (first difference at +%d)" % (what, first))


def rand_range(r, size, maxlen):
    if r.random() < 0.3:                       # aligned to 64K
        off = r.randrange(0, size // (64 * KIB)) * 64 * KIB
        n = r.randrange(1, maxlen // (64 * KIB) + 1) * 64 * KIB
    else:
        off = r.randrange(0, size)
        n = r.randrange(1, maxlen)
    return off, min(n, size - off)


def workload(uri, seed, image, model_path, trim, check_extents):
    import nbd
    r = random.Random(seed)
    model = bytearray(open(image, "rb").read())
    size = len(model)
    h = connect(uri, check_extents)
    assert h.get_size() == size, (h.get_size(), size)
    for step in range(300):
        op = r.random()
        off, n = rand_range(r, size, 300 * KIB)
        if op < 0.45:
            data = r.randbytes(n)
            fua = nbd.CMD_FLAG_FUA if r.random() < 0.2 else 0
            h.pwrite(data, off, fua)
            model[off:off + n] = data
        elif op < 0.55:
            h.zero(n, off, nbd.CMD_FLAG_FUA if r.random() < 0.2 else 0)
            model[off:off + n] = bytes(n)
        elif op < 0.6 and trim:
            h.trim(n, off)
            model[off:off + n] = bytes(n)
        elif op < 0.65:
            h.cache(n, off)
        elif op < 0.7:
            h.flush()
        else:
            check("step %d: read %d+%d" % (step, off, n),
                  h.pread(n, off), bytes(model[off:off + n]))
        if check_extents and step % 10 == 0:
            check_zero_extents(h, model, step)
    h.flush()
    got = bytearray()
    for off in range(0, size, 4 * MIB):
        got += h.pread(min(4 * MIB, size - off), off)
    check("final read", bytes(got), bytes(model))
    h.shutdown()
    open(model_path, "wb").write(model)


def check_zero_extents(h, model, step):
    import nbd
    found = []

    def cb(meta, offset, entries, err):
        if meta == nbd.CONTEXT_BASE_ALLOCATION:
            pos = offset
            for i in range(0, len(entries), 2):
                found.append((pos, entries[i], entries[i + 1]))
                pos += entries[i]
        return 0

    size = len(model)
    pos = 0
    while pos < size:
        del found[:]
        h.block_status(min(size - pos, 64 * MIB), pos, cb)
        for off, n, flags in found:
            if flags & nbd.STATE_ZERO and any(model[off:off + n]):
                sys.exit("step %d: extent %d+%d is reported zero but holds "
                         "written data" % (step, off, n))
        last = found[-1]
        pos = last[0] + last[1]


def crash(uri, seed, image, model_path, mask_path, ready):
    import nbd
    r = random.Random(seed)
    model = bytearray(open(image, "rb").read())
    size = len(model)
    mask = bytearray(b"\x01") * size
    h = connect(uri)
    for _ in range(150):                       # ~ 10 MiB
        off, n = rand_range(r, size, 128 * KIB)
        data = r.randbytes(n)
        h.pwrite(data, off, nbd.CMD_FLAG_FUA if r.random() < 0.2 else 0)
        model[off:off + n] = data
    h.flush()
    for _ in range(100):                       # after the FLUSH
        off, n = rand_range(r, size, 128 * KIB)
        data = r.randbytes(n)
        fua = r.random() < 0.3
        h.pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
        model[off:off + n] = data
        mask[off:off + n] = (b"\x01" if fua else b"\x00") * n
    open(model_path, "wb").write(model)
    open(mask_path, "wb").write(mask)
    open(ready, "w").close()
    time.sleep(60)


def writer_op(seed, writer, i):
    r = random.Random("%s/%s/%d" % (seed, writer, i))
    slot = r.randrange(0, 32)
    off = writer * 8 * MIB + slot * 256 * KIB + r.randrange(0, 8192)
    n = r.randrange(1, 200 * KIB)
    return off, r.randbytes(n)


def writer(uri, seed, w, log):
    h = connect(uri)
    with open(log, "w") as f:
        i = 0
        while True:
            off, data = writer_op(seed, w, i)
            try:
                h.pwrite(data, off)
            except Exception:
                return
            f.write("%d\n" % i)
            f.flush()
            i += 1


def verify_writers(image, path, seed, logs):
    model = bytearray(open(image, "rb").read())
    maybe = []
    total = 0
    for w, log in enumerate(logs):
        done = [int(x) for x in open(log).read().split()]
        for i in done:
            off, data = writer_op(seed, w, i)
            model[off:off + len(data)] = data
        total += len(done)
        maybe.append(writer_op(seed, w, len(done)))
    got = bytearray(open(path, "rb").read())
    for off, data in maybe:                     # in flight: either is fine
        got[off:off + len(data)] = model[off:off + len(data)]
    check("file after SIGTERM (%d replied writes)" % total, bytes(got),
          bytes(model))
    print(total)


def main(argv):
    cmd = argv[1]
    if cmd == "workload":
        workload(argv[2], int(argv[3]), argv[4], argv[5],
                 "--no-trim" not in argv, "--check-extents" in argv)
    elif cmd == "crash":
        crash(argv[2], int(argv[3]), argv[4], argv[5], argv[6], argv[7])
    elif cmd == "writer":
        writer(argv[2], int(argv[3]), int(argv[4]), argv[5])
    elif cmd == "verify-writers":
        verify_writers(argv[2], argv[3], int(argv[4]), argv[5:])
    elif cmd == "masked-equal":                 # FILE MODEL MASK
        got = open(argv[2], "rb").read()
        model = open(argv[3], "rb").read()
        mask = open(argv[4], "rb").read()
        if len(got) != len(model):
            sys.exit("file size %d, expected %d" % (len(got), len(model)))
        bad, must = [], 0
        for c in range(0, len(mask), 64 * KIB):
            m = mask[c:c + 64 * KIB]
            must += m.count(1)
            if got[c:c + 64 * KIB] == model[c:c + 64 * KIB]:
                continue
            bad += [c + i for i in range(len(m))
                    if m[i] and got[c + i] != model[c + i]]
        if bad:
            sys.exit("%d bytes that must be in the file are not (first at "
                     "%d)" % (len(bad), bad[0]))
        print(must)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
