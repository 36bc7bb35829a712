/*
 * FlowTarget capture: the compiled flow meter's per-packet loop (first stage).
 *
 * The meter (services/capture/flows.py, FlowMeter) keeps its flow table and
 * its Flow objects in Python; this loop meters a batch's records without the
 * interpreter where they are Ethernet II frames with up to 4 VLAN tags
 * (802.1Q, QinQ) carrying IPv4 (not a fragment; with or without options) or
 * IPv6 (no extension header) with TCP, UDP (not on a tunnel port), ICMP or
 * ICMPv6 (keyed without ports, as decode() keys them), also when that packet
 * is the inner one of a GTP-U G-PDU or of IP-in-IP (one tunnel deep: decode()'s
 * key, its outer VLANs, bytes and payload; the outermost IP packet for what the
 * capture cut; a new tunnelled flow with the tunnel's endpoints and id, as
 * _new_flow notes them from tunnel_outer), in the Python loop's order:
 *
 *   packet/byte totals, duplicate-frame check, housekeeping when a second of
 *   packet time has passed (_housekeep), table lookup by the directional key
 *   (proto byte + src + dst + sport + dport [+ b"/<vlan key>"], as
 *   _process_py builds it; for untagged IPv4 without options one slice,
 *   bytes((proto,)) + frame[26:38], as _fastpath.eth4's) and move to the end
 *   — or a new flow (_new_flow; after _end for a SYN on a closed flow's key) —
 *   the direction's packets, bytes, TCP flags and stamp, the flow's last time,
 *   the recorder's keep mark (FlowMeter.record_cutoff), the evidence ring;
 *   then, where due, the flow's events through the meter's own methods:
 *   _tcp_close (FIN/RST), _periodic (update record, active timeout), _sample
 *   (a sampled direction's payload or SYN/FIN), _dns (a DNS message).
 *
 * So Python runs per flow event only.  Every other frame (5+ VLAN tags, IPv6
 * extension headers, fragments, other tunnels, tunnels in tunnels, non-IP, other link types, anything
 * decode() calls malformed) it hands untouched to the pure-Python meter
 * (``one((rec,), dl, keep, i)``, FlowMeter._process_py) and goes on after it.
 * For the frames it takes, its header checks are decode()'s (untagged IPv4
 * without options: _fastpath.eth4's), so both meters see the same packets.
 * The pure-Python meter does exactly the same per record
 * (tests/services/capture/test_meter_twin.py replays the dev corpora and
 * synthetic encapsulations through both and compares every record, sample,
 * packet event, counter and evidence ring).
 *
 *   bind(flow_class, dir_class)   the Flow and _Dir classes with __slots__: learns their slot offsets
 *   run(meter, recs, one, dl, table, move_to_end, ev_trim, ev_keep[, keep, cutoff, cnew, ev_cap])
 *       -> (packets, bytes, duplicates) of the records it metered itself; keeps meter._prev_frame/_prev_ts
 *       in step; with keep (a bytearray of one byte per record, all 1) and cutoff > 0, sets keep[i] = 0
 *       for each record whose flow's rec_bytes had reached cutoff (else adds the frame's length to them);
 *       each packet goes to its flow's evidence ring (ring_push: ev_trim, ev_keep, ev_cap)
 *   ring_add(flow, ts, frame, trim, keep, cap)   flows.ring_add in C (its tests)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline uint32_t be16(const unsigned char *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static int is_tunnel_port(uint32_t p) { return p == 4789 || p == 2152 || p == 37008 || p == 5247; }

enum {
    S_PKTS, S_BYTES, D_PKTS, D_BYTES, S_FLAGS, D_FLAGS, S_STAMP, D_STAMP, LAST, EV, STATE, SAMPLING,
    IS_DNS, NEXT_CHECK, REC_BYTES, EV_SIZE, SD, DD, DIRS, FLOW_ID, NFLOW,
    /* the slots of the sampling state of one direction (flows.py's _Dir) */
    D_PAYLOADS = NFLOW, D_NBYTES, D_NXT, D_OOO, D_DONE, D_NEXT_SEQ, D_ACK, D_LAST_SEQ, NSLOTS
};
static const char *slot_names[NSLOTS] = {
    "s_pkts", "s_bytes", "d_pkts", "d_bytes", "s_flags", "d_flags", "s_stamp", "d_stamp", "last", "ev",
    "state", "sampling", "is_dns", "next_check", "rec_bytes", "ev_size", "sd", "dd", "dirs", "flow_id",
    "payloads", "nbytes", "nxt", "ooo", "done", "next_seq", "ack", "last_seq",
};
static Py_ssize_t offs[NSLOTS];
static PyTypeObject *flow_type = NULL, *dir_type = NULL;
static PyObject *empty_tuple = NULL;

#define SLOT(o, k) (*(PyObject **)((char *)(o) + offs[k]))

/* the offsets of slot_names[first:last] in class cls (object slots) */
static int learn_slots(PyObject *cls, int first, int last) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "bind() needs the Flow and _Dir classes");
        return -1;
    }
    for (int k = first; k < last; k++) {
        PyObject *d = PyObject_GetAttrString(cls, slot_names[k]);
        if (d == NULL)
            return -1;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", ((PyTypeObject *)cls)->tp_name, slot_names[k]);
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", ((PyTypeObject *)cls)->tp_name, slot_names[k]);
            return -1;
        }
        offs[k] = m->offset;
        Py_DECREF(d);
    }
    return 0;
}

static PyObject *new_dir(void);

/* 0 when new_dir() makes what dir_type() makes (slot by slot, equal values of the same types), else -1 */
static int dir_check(void) {
    PyObject *a = PyObject_CallNoArgs((PyObject *)dir_type), *b = a ? new_dir() : NULL;
    int rc = b ? 0 : -1;
    for (int k = NFLOW; rc == 0 && k < NSLOTS; k++) {
        PyObject *x = SLOT(a, k), *y = SLOT(b, k);
        int eq = x && y && Py_TYPE(x) == Py_TYPE(y) ? PyObject_RichCompareBool(x, y, Py_EQ) : 0;
        if (eq != 1) {
            if (eq == 0)
                PyErr_Format(PyExc_TypeError, "_meter makes a _Dir whose %s differs from _Dir()'s", slot_names[k]);
            rc = -1;
        }
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    return rc;
}

static PyObject *meter_bind(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cls, *dcls;
    if (!PyArg_ParseTuple(args, "OO", &cls, &dcls) || learn_slots(cls, 0, NFLOW) < 0
        || learn_slots(dcls, NFLOW, NSLOTS) < 0)
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(flow_type, (PyTypeObject *)cls);
    Py_INCREF(dcls);
    Py_XSETREF(dir_type, (PyTypeObject *)dcls);
    if (dir_check() < 0) {
        Py_CLEAR(dir_type);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* a slot's value; NULL (with AttributeError) when unset */
static inline PyObject *get(PyObject *f, int k) {
    PyObject *v = SLOT(f, k);
    if (v == NULL)
        PyErr_Format(PyExc_AttributeError, "Flow.%s is not set", slot_names[k]);
    return v;
}

static inline PyObject *ref(PyObject *o) {
    Py_INCREF(o);
    return o;
}

static inline void put(PyObject *f, int k, PyObject *v) {   /* steals v */
    PyObject *old = SLOT(f, k);
    SLOT(f, k) = v;
    Py_XDECREF(old);
}

static int add_int(PyObject *f, int k, long long inc) {
    PyObject *v = get(f, k);
    if (v == NULL)
        return -1;
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    PyObject *n = PyLong_FromLongLong(x + inc);
    if (n == NULL)
        return -1;
    put(f, k, n);
    return 0;
}

static int or_int(PyObject *f, int k, long bits) {
    PyObject *v = get(f, k);
    if (v == NULL)
        return -1;
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if ((x | bits) == x)
        return 0;
    PyObject *n = PyLong_FromLong(x | bits);
    if (n == NULL)
        return -1;
    put(f, k, n);
    return 0;
}

/* a record's VLAN ids (outermost first) as decode() gives them: a new reference */
static PyObject *make_vlans(const uint32_t *vids, int nvl) {
    if (nvl == 0) {
        Py_INCREF(empty_tuple);
        return empty_tuple;
    }
    PyObject *t = PyTuple_New(nvl);
    if (t == NULL)
        return NULL;
    for (int k = 0; k < nvl; k++) {
        PyObject *v = PyLong_FromUnsignedLong(vids[k]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, k, v);
    }
    return t;
}

static PyObject *s_prev_frame, *s_prev_ts, *s_next_house, *s_fin;

/* the meter's (prev frame, prev ts, next housekeeping) from its attributes */
static int load_state(PyObject *meter, PyObject **prev, double *prev_ts, double *nh) {
    PyObject *p = PyObject_GetAttr(meter, s_prev_frame);
    if (p == NULL)
        return -1;
    PyObject *t = PyObject_GetAttr(meter, s_prev_ts), *h = t ? PyObject_GetAttr(meter, s_next_house) : NULL;
    if (h == NULL) {
        Py_DECREF(p);
        Py_XDECREF(t);
        return -1;
    }
    *prev_ts = PyFloat_AsDouble(t);
    *nh = PyFloat_AsDouble(h);
    Py_DECREF(t);
    Py_DECREF(h);
    if (PyErr_Occurred()) {
        Py_DECREF(p);
        return -1;
    }
    Py_XSETREF(*prev, p);
    return 0;
}

static PyObject *iname(const char *lit);

static int store_state(PyObject *meter, PyObject *prev, double prev_ts, double *now, int *now_set) {
    PyObject *t = PyFloat_FromDouble(prev_ts);
    if (t == NULL)
        return -1;
    int r = PyObject_SetAttr(meter, s_prev_frame, prev) | PyObject_SetAttr(meter, s_prev_ts, t);
    Py_DECREF(t);
    if (r == 0 && *now_set) {   /* house_in_c's clock, as FlowMeter._housekeep sets it */
        PyObject *n = PyFloat_FromDouble(*now), *h = n ? PyFloat_FromDouble(*now + 1.0) : NULL;
        r = h == NULL || PyObject_SetAttr(meter, iname("_now"), n) < 0 || PyObject_SetAttr(meter, s_next_house, h) < 0
            ? -1 : 0;
        Py_XDECREF(n);
        Py_XDECREF(h);
        *now_set = 0;
    }
    return r;
}

/* the interned str of a C string literal, made once per literal (attribute names per flow event:
 * PyObject_GetAttrString would make and hash a new str each time); found by the literal's address in a
 * small open-addressing table (mattr calls it per attribute a flow event reads) */
#define NINAMES 256
static struct { const char *lit; PyObject *name; } inames[NINAMES];
static int ninames = 0;

static PyObject *iname(const char *lit) {
    size_t h = ((uintptr_t)lit >> 3) & (NINAMES - 1);
    while (inames[h].lit != NULL) {
        if (inames[h].lit == lit)
            return inames[h].name;
        h = (h + 1) & (NINAMES - 1);
    }
    if (ninames >= NINAMES / 2) {   /* cannot happen with this file's literals */
        PyErr_SetString(PyExc_RuntimeError, "_meter: too many attribute names");
        return NULL;
    }
    PyObject *n = PyUnicode_InternFromString(lit);
    if (n == NULL)
        return NULL;
    inames[h].lit = lit;
    inames[h].name = n;   /* kept for the module's life */
    ninames++;
    return n;
}

/* o.<name> for a C string literal name (its interned str made once) */
static PyObject *mattr(PyObject *o, const char *name) {
    PyObject *nm = iname(name);
    return nm ? PyObject_GetAttr(o, nm) : NULL;
}

static int meter_ll(PyObject *meter, const char *name, long long *out) {
    PyObject *nm = iname(name);
    PyObject *v = nm ? PyObject_GetAttr(meter, nm) : NULL;
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* an int slot's value in *out: 0, or -1 with an exception */
static inline int slot_ll(PyObject *o, int k, long long *out) {
    PyObject *v = get(o, k);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static inline int put_ll(PyObject *o, int k, long long x) {
    PyObject *v = PyLong_FromLongLong(x);
    if (v == NULL)
        return -1;
    put(o, k, v);
    return 0;
}

static PyObject *s_dirty, *s_dir_s, *s_dir_d;

/* a new _Dir as flows._Dir() makes it, without running its __init__ in Python (once per sampled direction:
 * two per flow); bind() checks that the two agree */
static PyObject *new_dir(void) {
    PyObject *d = dir_type->tp_alloc(dir_type, 0), *pl = d ? PyList_New(0) : NULL;
    if (pl == NULL) {
        Py_XDECREF(d);
        return NULL;
    }
    SLOT(d, D_PAYLOADS) = pl;
    SLOT(d, D_NBYTES) = PyLong_FromLong(0);   /* small ints: cached, never NULL */
    SLOT(d, D_NXT) = PyLong_FromLong(-1);
    SLOT(d, D_OOO) = ref(Py_None);
    SLOT(d, D_DONE) = ref(Py_False);
    SLOT(d, D_NEXT_SEQ) = PyLong_FromLong(0);
    SLOT(d, D_ACK) = PyLong_FromLong(0);
    SLOT(d, D_LAST_SEQ) = PyLong_FromLong(-1);
    return d;
}

/*
 * FlowMeter._sample for a deferring meter (defer_samples), in C where it is one of the common
 * cases: the packet is a TCP SYN/FIN or bare segment,
 * an in-order TCP segment, a UDP datagram, or one for a direction already done.  Same steps and
 * order as _sample; the flow goes to meter._dirty as _sample puts it there.  Returns 1 when done,
 * 0 when _sample must do it (nothing changed then but a new _Dir: reassembly, a better copy of the last
 * chunk), -1 on error.
 */
/* the flow's sample is due at the next flush_samples: meter._dirty[flow_id] = (f, ts, fwd, vlans, final), as
 * _sample defers it.  1, or -1 with an exception. */
static int mark_dirty(PyObject *meter, PyObject *f, PyObject *tso, int fwd, PyObject *vlans, long long sampling) {
    PyObject *fid = get(f, FLOW_ID), *dirty = PyObject_GetAttr(meter, s_dirty);
    if (fid == NULL || dirty == NULL) {
        Py_XDECREF(dirty);
        return -1;
    }
    PyObject *entry = PyTuple_Pack(5, f, tso, fwd ? Py_True : Py_False, vlans, sampling ? Py_False : Py_True);
    int r = entry == NULL ? -1 : PyObject_SetItem(dirty, fid, entry);
    Py_XDECREF(entry);
    Py_DECREF(dirty);
    return r < 0 ? -1 : 1;
}

static int sample(PyObject *meter, PyObject *f, PyObject *tso, const unsigned char *fr, long po, long pl, long wpl,
                  int fwd, int proto, uint32_t flags, uint32_t seq, uint32_t ack, PyObject *vlans,
                  long long smax_bytes, long long smax_pkts) {
    PyObject *d = SLOT(f, fwd ? SD : DD);
    if (d == Py_None) {                              /* the direction's first: a new _Dir, as _sample makes it */
        d = new_dir();
        if (d == NULL)
            return -1;
        put(f, fwd ? SD : DD, d);
    }
    if (d == NULL || !Py_IS_TYPE(d, dir_type))
        return 0;
    const long long M = 0xFFFFFFFFLL;
    int tcp = proto == 6;
    long long nxt, last_seq;
    if (slot_ll(d, D_NXT, &nxt) < 0 || slot_ll(d, D_LAST_SEQ, &last_seq) < 0)
        return -1;
    PyObject *ooo = get(d, D_OOO), *donev = get(d, D_DONE), *payloads = get(d, D_PAYLOADS);
    if (ooo == NULL || donev == NULL || payloads == NULL)
        return -1;
    int done = PyObject_IsTrue(donev);
    if (done < 0)
        return -1;
    int syn = tcp && (flags & 0x02);
    long long nxt2 = syn ? ((long long)seq + 1) & M : nxt;
    int ooo_held = !syn && ooo != Py_None && (!PyDict_CheckExact(ooo) || PyDict_GET_SIZE(ooo) > 0);
    int take = pl > 0 && !done;
    long long nbytes = 0;
    long room = 0;
    /* how a TCP segment's payload is taken: 0 in order, 1 a better copy of the last chunk (it replaces it),
     * 2 the direction's first without a SYN seen (the stream starts at it: _seq_payload_cut's nxt < 0) */
    int how = 0;
    if (take) {
        if (!PyList_CheckExact(payloads))
            return 0;
        if (tcp) {
            long long diff = ((long long)seq + pl - nxt2) & M, behind = (nxt2 - (long long)seq) & M;
            Py_ssize_t np = PyList_GET_SIZE(payloads);
            if ((long long)seq == last_seq && np > 0 && diff - 1 < 0x7FFFFFFF)
                how = 1;
            else if (nxt2 < 0 && !ooo_held)
                how = 2;
            else if ((long long)seq != nxt2 && nxt2 >= 0 && behind <= 0x80000000LL && behind >= pl)
                take = 0;                            /* a pure retransmission: nothing new to sample */
            else if ((long long)seq != nxt2 || ooo_held)
                return 0;                            /* out of order: reassembly (_seq_payload_cut) */
        }
    }
    if (take) {
        if (slot_ll(d, D_NBYTES, &nbytes) < 0)
            return -1;
        if (how == 1) {                              /* the chunk it replaces no longer counts */
            PyObject *lastp = PyList_GET_ITEM(payloads, PyList_GET_SIZE(payloads) - 1);
            if (!PyBytes_CheckExact(lastp))
                return 0;
            nbytes -= PyBytes_GET_SIZE(lastp);
        }
        if (smax_bytes - nbytes <= 0)
            return 0;
        room = smax_bytes - nbytes < pl ? (long)(smax_bytes - nbytes) : pl;
    }
    /* from here on as _sample does it */
    if (tcp) {
        if (put_ll(d, D_NEXT_SEQ, ((long long)seq + wpl + ((flags & 0x03) ? 1 : 0)) & M) < 0)
            return -1;
        if ((flags & 0x10) && put_ll(d, D_ACK, (long long)ack) < 0)
            return -1;
        if (syn) {
            if (put_ll(d, D_NXT, nxt2) < 0)
                return -1;
            Py_INCREF(Py_None);
            put(d, D_OOO, Py_None);
        }
    }
    if (!take)
        return 1;
    PyObject *payload = PyBytes_FromStringAndSize((const char *)fr + po, room);
    if (payload == NULL)
        return -1;
    long long sampling;
    if (how == 1) {                                  /* the last chunk again, with more data: it replaces it */
        if (PyList_SetItem(payloads, PyList_GET_SIZE(payloads) - 1, payload) < 0   /* steals payload */
            || put_ll(d, D_NBYTES, nbytes + room) < 0 || put_ll(d, D_NXT, ((long long)seq + pl) & M) < 0
            || slot_ll(f, SAMPLING, &sampling) < 0)
            return -1;
        return mark_dirty(meter, f, tso, fwd, vlans, sampling);
    }
    /* in order: the stream goes on after the bytes the capture cut off (wpl); a stream's first segment
     * without a SYN: after the bytes the frame holds, as _seq_payload_cut takes it */
    if (tcp && (put_ll(d, D_LAST_SEQ, (long long)seq) < 0
                || put_ll(d, D_NXT, ((long long)seq + (how == 2 ? pl : wpl)) & M) < 0)) {
        Py_DECREF(payload);
        return -1;
    }
    int r = PyList_Append(payloads, payload);
    Py_DECREF(payload);
    if (r < 0 || put_ll(d, D_NBYTES, nbytes + room) < 0)
        return -1;
    PyObject *dirs = get(f, DIRS);
    if (dirs == NULL)
        return -1;
    PyObject *nd = PyUnicode_Concat(dirs, fwd ? s_dir_s : s_dir_d);
    if (nd == NULL)
        return -1;
    put(f, DIRS, nd);
    if (slot_ll(f, SAMPLING, &sampling) < 0)
        return -1;
    if (nbytes + room >= smax_bytes || PyList_GET_SIZE(payloads) >= smax_pkts) {
        Py_INCREF(Py_True);
        put(d, D_DONE, Py_True);
        Py_INCREF(Py_None);
        put(d, D_OOO, Py_None);
        sampling &= fwd ? 2 : 1;
        if (put_ll(f, SAMPLING, sampling) < 0)
            return -1;
    }
    return mark_dirty(meter, f, tso, fwd, vlans, sampling);
}

static int emit_record(PyObject *raw, PyObject *idx, PyObject *sink_flow, PyObject *f, PyObject *phase, PyObject *ts,
                       PyObject *probe,
                       PyObject *app, PyObject *application, PyObject *category, PyObject *host, PyObject *conf);

/* ---- a new flow of the loop's frames (TCP/UDP, no tunnel), as FlowMeter._new_flow makes it ---- */
enum {
    N_KEY, N_RKEY, N_VER, N_PROTO, N_CLOSED_AT, N_FIN, N_SAMPLE_SEQ, N_PENDING, N_VERDICT, N_VERDICT_FINAL,
    N_DEADLINE, N_HOT_N, N_LAST_UPDATE, N_STATE, N_END_REASON, NNEW
};
static const char *new_slot_names[NNEW] = {
    "key", "rkey", "ver", "proto", "closed_at", "fin", "sample_seq", "pending", "verdict", "verdict_final",
    "deadline", "hot_n", "last_update", "state", "end_reason",
};
static Py_ssize_t new_offs[NNEW];
static int new_bound = 0;
static PyObject *s_tcp_name = NULL, *s_udp_name = NULL, *s_start = NULL, *s_unknown = NULL, *s_bfd = NULL;
static PyObject *s_tun_gtp = NULL, *s_tun_ipip = NULL, *s_tun_gtp_n = NULL, *s_tun_ipip_n = NULL;
static PyObject *s_tun_vxlan = NULL, *s_tun_vxlan_n = NULL, *s_tun_gre = NULL, *s_tun_gre_n = NULL;
static PyObject *s_tun_erspan = NULL, *s_tun_erspan_n = NULL;
/* transport names of ICMP and ICMPv6 (bind_record's optional arguments): without them ICMP goes to Python */
static PyObject *s_icmp_name = NULL, *s_icmp6_name = NULL;

/*
 * record(f, phase, ts, probe, app, application, category, host, confidence) -> FlowRecord
 *   FlowMeter._record's event built in C: the same dict, key for key in the same order (orjson writes it
 *   in that order), from the Flow's slots, then the pydantic instance as flows._build makes it (no
 *   validation: the meter computed every value itself).  bind_record(FlowRecord, BaseModel) first; it
 *   returns False (and record() is not to be used) when the model's fields are not exactly these.
 */
enum {
    R_FLOW_ID, R_TRANSPORT, R_SRC_IP, R_SPORT, R_DST_IP, R_DPORT, R_VLAN_IDS, R_END_REASON, R_SOURCE, R_VER,
    R_FIRST, R_LAST, R_S_PKTS, R_S_BYTES, R_D_PKTS, R_D_BYTES, R_S_FLAGS, R_D_FLAGS, R_SRC_MAC, R_DST_MAC,
    R_TUNNEL, R_OUTER, R_ICMP, NREC
};
static const char *rec_slot_names[NREC] = {
    "flow_id", "transport", "src_ip", "sport", "dst_ip", "dport", "vlan_ids", "end_reason", "source", "ver",
    "first", "last", "s_pkts", "s_bytes", "d_pkts", "d_bytes", "s_flags", "d_flags", "src_mac", "dst_mac",
    "tunnel", "outer", "icmp",
};
static Py_ssize_t rec_offs[NREC];
/* the record's keys, in _record's order */
enum {
    K_TIMESTAMP, K_PROBE, K_FLOW_ID, K_EVENT_TYPE, K_TRANSPORT, K_SRC_IP, K_SRC_PORT, K_DST_IP, K_DST_PORT,
    K_VLAN_ID, K_PHASE, K_END_REASON, K_SOURCE, K_IP_VERSION, K_FIRST_SEEN, K_LAST_SEEN, K_DURATION_MS,
    K_S_PKTS, K_S_BYTES, K_D_PKTS, K_D_BYTES, K_S_FLAGS, K_D_FLAGS, K_SRC_MAC, K_DST_MAC, K_TUNNEL,
    K_TUNNEL_SRC_IP, K_TUNNEL_DST_IP, K_TUNNEL_ID, K_APP, K_APPLICATION, K_CATEGORY, K_HOST, K_CONFIDENCE,
    K_ICMP_TYPE, K_ICMP_CODE, NKEYS
};
static const char *rec_key_names[NKEYS] = {
    "timestamp", "probe", "flow_id", "event_type", "transport", "src_ip", "src_port", "dst_ip", "dst_port",
    "vlan_id", "phase", "end_reason", "source", "ip_version", "first_seen", "last_seen", "duration_ms",
    "src2dst_packets", "src2dst_bytes", "dst2src_packets", "dst2src_bytes", "src2dst_tcp_flags",
    "dst2src_tcp_flags", "src_mac", "dst_mac", "tunnel", "tunnel_src_ip", "tunnel_dst_ip", "tunnel_id",
    "app_protocol", "application", "category", "host", "confidence", "icmp_type", "icmp_code",
};
static PyObject *rec_keys[NKEYS];
static PyObject *rec_cls = NULL, *rec_fields_set = NULL, *s_flow = NULL, *s_end = NULL, *s_empty = NULL;
static PyObject *record_of(PyObject *f, PyObject *phase, PyObject *ts, PyObject *probe, PyObject *app,
                           PyObject *application, PyObject *category, PyObject *host, PyObject *conf);
static Py_ssize_t off_fields_set = -1, off_extra = -1, off_private = -1;
static PyObject *zero_int = NULL, *rec_template = NULL;
static PyObject *zero_float = NULL;   /* one 0.0 for every new flow's closed_at/deadline, as Flow.__init__'s constant */

static int member_offset(PyObject *cls, const char *name, Py_ssize_t *out) {
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (d == NULL)
        return -1;
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
    if (ok)
        *out = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    if (!ok)
        PyErr_Format(PyExc_TypeError, "%s is not an object slot", name);
    return ok ? 0 : -1;
}

static PyObject *bind_record(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cls, *base, *tcp_name = NULL, *udp_name = NULL, *icmp_name = NULL, *icmp6_name = NULL;
    if (!PyArg_ParseTuple(args, "O!O!|UUUU", &PyType_Type, &cls, &PyType_Type, &base, &tcp_name, &udp_name,
                          &icmp_name, &icmp6_name))
        return NULL;
    Py_XINCREF(icmp_name);
    Py_XSETREF(s_icmp_name, icmp_name);
    Py_XINCREF(icmp6_name);
    Py_XSETREF(s_icmp6_name, icmp6_name);
    if (tcp_name == NULL || udp_name == NULL) {
        PyErr_SetString(PyExc_TypeError, "bind_record(FlowRecord, BaseModel, transport name of 6, of 17)");
        return NULL;
    }
    Py_INCREF(tcp_name);
    Py_XSETREF(s_tcp_name, tcp_name);
    Py_INCREF(udp_name);
    Py_XSETREF(s_udp_name, udp_name);
    if (flow_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() the Flow class first");
        return NULL;
    }
    for (int k = 0; k < NREC; k++) {
        if (member_offset((PyObject *)flow_type, rec_slot_names[k], &rec_offs[k]) < 0)
            return NULL;
    }
    PyObject *bd = ((PyTypeObject *)base)->tp_dict;
    const char *names[3] = {"__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"};
    Py_ssize_t *outs[3] = {&off_fields_set, &off_extra, &off_private};
    for (int k = 0; k < 3; k++) {
        PyObject *d = PyDict_GetItemString(bd, names[k]);   /* borrowed */
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
            || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "BaseModel.%s is not an object slot", names[k]);
            return NULL;
        }
        *outs[k] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    PyObject *fields = PyObject_GetAttrString(cls, "model_fields");
    if (fields == NULL)
        return NULL;
    PyObject *fs = PySet_New(fields);
    Py_DECREF(fields);
    if (fs == NULL)
        return NULL;
    int same = PySet_GET_SIZE(fs) == NKEYS;
    for (int k = 0; same && k < NKEYS; k++) {
        int has = PySet_Contains(fs, rec_keys[k]);
        if (has < 0) {
            Py_DECREF(fs);
            return NULL;
        }
        same = has;
    }
    if (!same) {
        Py_DECREF(fs);
        Py_RETURN_FALSE;
    }
    for (int k = 0; k < NNEW; k++) {
        if (member_offset((PyObject *)flow_type, new_slot_names[k], &new_offs[k]) < 0) {
            Py_DECREF(fs);
            return NULL;
        }
    }
    new_bound = 1;
    Py_XSETREF(rec_fields_set, fs);
    Py_INCREF(cls);
    Py_XSETREF(rec_cls, cls);
    Py_RETURN_TRUE;
}

#define RSLOT(o, k) (*(PyObject **)((char *)(o) + rec_offs[k]))
#define MSLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

/* d[key] = v (a borrowed value; NULL: an unset slot, AttributeError) */
static inline int dset(PyObject *d, int key, PyObject *v, int slot) {
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "Flow.%s is not set", rec_slot_names[slot]);
        return -1;
    }
    return PyDict_SetItem(d, rec_keys[key], v);
}

/* d[key] = v, stealing v */
static inline int dput(PyObject *d, int key, PyObject *v) {
    if (v == NULL)
        return -1;
    int r = PyDict_SetItem(d, rec_keys[key], v);
    Py_DECREF(v);
    return r;
}

/* item k of a sequence value (a tuple here) when it is non-empty, else dflt: a new reference */
static PyObject *first_or(PyObject *seq, Py_ssize_t k, PyObject *dflt) {
    int t = PyObject_IsTrue(seq);
    if (t < 0)
        return NULL;
    if (!t) {
        Py_INCREF(dflt);
        return dflt;
    }
    return PySequence_GetItem(seq, k);
}

static PyObject *record(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *f, *phase, *ts, *probe, *app, *application, *category, *host, *conf;
    if (!PyArg_ParseTuple(args, "OUOOOOOOO", &f, &phase, &ts, &probe, &app, &application, &category, &host, &conf))
        return NULL;
    if (rec_cls == NULL || flow_type == NULL || !PyObject_TypeCheck(f, flow_type)) {
        PyErr_SetString(PyExc_TypeError, "record() needs bind_record() and a Flow");
        return NULL;
    }
    return record_of(f, phase, ts, probe, app, application, category, host, conf);
}

/* a borrowed slot value as a new reference (NULL with AttributeError when unset) */
static inline PyObject *rval(PyObject *f, int slot) {
    PyObject *v = RSLOT(f, slot);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "Flow.%s is not set", rec_slot_names[slot]);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

/* the record's values, key by key in _record's order (new references; all NULL on error) */
static int record_values(PyObject *f, PyObject *phase, PyObject *ts, PyObject *probe, PyObject *app,
                         PyObject *application, PyObject *category, PyObject *host, PyObject *conf,
                         PyObject *vals[NKEYS]) {
    memset(vals, 0, sizeof(PyObject *) * NKEYS);
    int is_end = PyUnicode_CompareWithASCIIString(phase, "end") == 0;
    PyObject *first = RSLOT(f, R_FIRST), *last = RSLOT(f, R_LAST);
    if (first == NULL || last == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Flow.first/last is not set");
        return -1;
    }
    double fd = PyFloat_AsDouble(first), ld = PyFloat_AsDouble(last);
    if ((fd == -1.0 || ld == -1.0) && PyErr_Occurred())
        return -1;
    /* flows.duration_ms: whole microseconds (rounded half to even, as Python's round) in milliseconds */
    double dus = (ld - fd) * 1e6, dur = dus > 0.0 && dus < 1e18 ? nearbyint(dus) / 1e3 : 0.0;
    if (!(dur > 0.0))
        dur = 0.0;
    PyObject *vl = RSLOT(f, R_VLAN_IDS), *outer = RSLOT(f, R_OUTER), *icmp = RSLOT(f, R_ICMP);
    if (vl == NULL || outer == NULL || icmp == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Flow.vlan_ids/outer/icmp is not set");
        return -1;
    }
    vals[K_TIMESTAMP] = ref(ts);
    vals[K_PROBE] = ref(probe);
    vals[K_FLOW_ID] = rval(f, R_FLOW_ID);
    vals[K_EVENT_TYPE] = ref(s_flow);
    vals[K_TRANSPORT] = rval(f, R_TRANSPORT);
    vals[K_SRC_IP] = rval(f, R_SRC_IP);
    vals[K_SRC_PORT] = rval(f, R_SPORT);
    vals[K_DST_IP] = rval(f, R_DST_IP);
    vals[K_DST_PORT] = rval(f, R_DPORT);
    vals[K_VLAN_ID] = first_or(vl, 0, zero_int);
    vals[K_PHASE] = ref(phase);
    vals[K_END_REASON] = is_end ? rval(f, R_END_REASON) : ref(s_empty);
    vals[K_SOURCE] = rval(f, R_SOURCE);
    vals[K_IP_VERSION] = rval(f, R_VER);
    vals[K_FIRST_SEEN] = ref(first);
    vals[K_LAST_SEEN] = ref(last);
    vals[K_DURATION_MS] = PyFloat_FromDouble(dur);
    vals[K_S_PKTS] = rval(f, R_S_PKTS);
    vals[K_S_BYTES] = rval(f, R_S_BYTES);
    vals[K_D_PKTS] = rval(f, R_D_PKTS);
    vals[K_D_BYTES] = rval(f, R_D_BYTES);
    vals[K_S_FLAGS] = rval(f, R_S_FLAGS);
    vals[K_D_FLAGS] = rval(f, R_D_FLAGS);
    vals[K_SRC_MAC] = rval(f, R_SRC_MAC);
    vals[K_DST_MAC] = rval(f, R_DST_MAC);
    vals[K_TUNNEL] = rval(f, R_TUNNEL);
    vals[K_TUNNEL_SRC_IP] = first_or(outer, 0, s_empty);
    vals[K_TUNNEL_DST_IP] = first_or(outer, 1, s_empty);
    vals[K_TUNNEL_ID] = first_or(outer, 2, zero_int);
    vals[K_APP] = ref(app);
    vals[K_APPLICATION] = ref(application);
    vals[K_CATEGORY] = ref(category);
    vals[K_HOST] = ref(host);
    vals[K_CONFIDENCE] = ref(conf);
    vals[K_ICMP_TYPE] = first_or(icmp, 0, Py_None);
    vals[K_ICMP_CODE] = first_or(icmp, 1, Py_None);
    for (int k = 0; k < NKEYS; k++) {
        if (vals[k] == NULL) {
            for (int j = 0; j < NKEYS; j++)
                Py_CLEAR(vals[j]);
            return -1;
        }
    }
    return 0;
}

static void values_clear(PyObject *vals[NKEYS]) {
    for (int k = 0; k < NKEYS; k++)
        Py_CLEAR(vals[k]);
}

static PyObject *record_of(PyObject *f, PyObject *phase, PyObject *ts, PyObject *probe, PyObject *app,
                           PyObject *application, PyObject *category, PyObject *host, PyObject *conf) {
    PyObject *vals[NKEYS];
    if (record_values(f, phase, ts, probe, app, application, category, host, conf, vals) < 0)
        return NULL;
    /* a copy of a dict with every key (in order, values None): the stores below replace values, no resizing */
    PyObject *d = PyDict_Copy(rec_template);
    for (int k = 0; d != NULL && k < NKEYS; k++) {
        if (PyDict_SetItem(d, rec_keys[k], vals[k]) < 0)
            Py_CLEAR(d);
    }
    values_clear(vals);
    if (d == NULL)
        return NULL;
    /* the instance, as flows._build makes it: object.__new__, __dict__, fields set, no extra, no private */
    PyTypeObject *tp = (PyTypeObject *)rec_cls;
    PyObject *m = tp->tp_new == NULL ? NULL : PyBaseObject_Type.tp_new(tp, empty_tuple, NULL);
    if (m == NULL) {
        Py_DECREF(d);
        return NULL;
    }
    if (PyObject_GenericSetDict(m, d, NULL) < 0) {
        Py_DECREF(d);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(d);
    Py_INCREF(rec_fields_set);
    Py_XSETREF(MSLOT(m, off_fields_set), rec_fields_set);
    Py_INCREF(Py_None);
    Py_XSETREF(MSLOT(m, off_extra), Py_None);
    Py_INCREF(Py_None);
    Py_XSETREF(MSLOT(m, off_private), Py_None);
    return m;
}

/*
 * Counters: the meter's flow counters (FlowMeter._c) as C fields, stepped here without a dict lookup and an
 * int object per step (8 per flow before); Python reads and writes them as attributes
 */
typedef struct {
    PyObject_HEAD
    long long next_id, nflows, pending, ev_flows, flows_created, flows_ended, one_way_tcp_flows, samples_sent;
} Counters;

static PyMemberDef counters_members[] = {
    {"next_id", T_LONGLONG, offsetof(Counters, next_id), 0, "flows numbered so far (flow ids)"},
    {"nflows", T_LONGLONG, offsetof(Counters, nflows), 0, "flows in the table"},
    {"pending", T_LONGLONG, offsetof(Counters, pending), 0, "samples sent whose verdict has not come"},
    {"ev_flows", T_LONGLONG, offsetof(Counters, ev_flows), 0, "flows of the table with an evidence ring"},
    {"flows_created", T_LONGLONG, offsetof(Counters, flows_created), 0, NULL},
    {"flows_ended", T_LONGLONG, offsetof(Counters, flows_ended), 0, NULL},
    {"one_way_tcp_flows", T_LONGLONG, offsetof(Counters, one_way_tcp_flows), 0, NULL},
    {"samples_sent", T_LONGLONG, offsetof(Counters, samples_sent), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CountersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_meter.Counters",
    .tp_basicsize = sizeof(Counters),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The flow meter's flow counters (all 0 at first).",
    .tp_members = counters_members,
    .tp_new = PyType_GenericNew,
};

/* counters[k] += n (from 0), counters being a meter's counters dict */
static int dict_count(PyObject *c, PyObject *k, long long n) {
    PyObject *v = PyDict_GetItemWithError(c, k);
    long long x = v == NULL ? 0 : PyLong_AsLongLong(v);
    PyObject *nv = (v == NULL && PyErr_Occurred()) || (x == -1 && PyErr_Occurred()) ? NULL : PyLong_FromLongLong(x + n);
    int r = nv == NULL ? -1 : PyDict_SetItem(c, k, nv);
    Py_XDECREF(nv);
    return r;
}

/* FlowMeter._count(k, n) for a name k (a str): meter.counters[k] += n (from 0) */
static int meter_count_o(PyObject *meter, PyObject *k, long long n) {
    PyObject *cn = iname("counters");
    PyObject *c = cn && k ? PyObject_GetAttr(meter, cn) : NULL;
    if (c == NULL)
        return -1;
    if (!PyDict_Check(c)) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_TypeError, "the meter's counters are not a dict");
        return -1;
    }
    int r = dict_count(c, k, n);
    Py_DECREF(c);
    return r;
}

/* the same for a C string literal name */
static int meter_count(PyObject *meter, const char *name, long long n) {
    return meter_count_o(meter, iname(name), n);
}

/* the meter's Counters (meter._c), a new reference */
static Counters *meter_counters(PyObject *meter) {
    PyObject *nm = iname("_c");
    PyObject *c = nm ? PyObject_GetAttr(meter, nm) : NULL;
    if (c != NULL && !PyObject_TypeCheck(c, &CountersType)) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_TypeError, "the meter's _c is not a _meter.Counters");
        return NULL;
    }
    return (Counters *)c;
}

#define NSLOT(o, k) (*(PyObject **)((char *)(o) + new_offs[k]))

typedef struct {
    PyObject *table, *move_to_end, *sink_flow, *text_cache, *young_append, *prefix, *source, *probe, *raw, *idx;
    Counters *ctr;
    PyObject *m_evict, *m_ip_text, *m_mac_text, *m_count;
    long long max_flows, hot_pk, ev_packets, ev_max_flows, text_max, own_text;
    double upd, active, hot_iv;
} NewFlow;

static void nf_clear(NewFlow *c) {
    Py_CLEAR(c->ctr);
    Py_CLEAR(c->sink_flow);
    Py_CLEAR(c->raw);
    Py_CLEAR(c->idx);
    Py_CLEAR(c->text_cache);
    Py_CLEAR(c->young_append);
    Py_CLEAR(c->prefix);
    Py_CLEAR(c->source);
    Py_CLEAR(c->probe);
    Py_CLEAR(c->m_evict);
    Py_CLEAR(c->m_ip_text);
    Py_CLEAR(c->m_mac_text);
    Py_CLEAR(c->m_count);
}

static int attr_d(PyObject *o, const char *name, double *out) {
    PyObject *nm = iname(name);   /* once per call of expire(): per second of packet time, or more in a sparse file */
    PyObject *v = nm ? PyObject_GetAttr(o, nm) : NULL;
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *sink_raw(PyObject *sink, const char *name);

/* the meter's settings and helpers a new flow needs (constant during one run()) */
static int nf_load(NewFlow *c, PyObject *meter, PyObject *table, PyObject *move_to_end) {
    memset(c, 0, sizeof *c);
    c->table = table;
    c->move_to_end = move_to_end;
    PyObject *sink = PyObject_GetAttrString(meter, "sink"), *young = NULL;
    if (sink == NULL)
        return -1;
    c->sink_flow = PyObject_GetAttrString(sink, "flow");
    c->raw = sink_raw(sink, "raw_live");
    c->idx = c->raw ? sink_raw(sink, "raw_index") : NULL;
    Py_DECREF(sink);
    young = c->sink_flow ? PyObject_GetAttrString(meter, "_young") : NULL;
    c->young_append = young ? PyObject_GetAttrString(young, "append") : NULL;
    Py_XDECREF(young);
    if (c->young_append == NULL || (c->ctr = meter_counters(meter)) == NULL
        || (c->text_cache = PyObject_GetAttrString(meter, "_text_cache")) == NULL
        || (c->prefix = PyObject_GetAttrString(meter, "_prefix")) == NULL
        || (c->source = PyObject_GetAttrString(meter, "source")) == NULL
        || (c->probe = PyObject_GetAttrString(meter, "probe")) == NULL
        || (c->m_evict = PyObject_GetAttrString(meter, "_evict_one")) == NULL
        || (c->m_ip_text = PyObject_GetAttrString(meter, "_ip_text")) == NULL
        || (c->m_mac_text = PyObject_GetAttrString(meter, "_mac_text")) == NULL
        || (c->m_count = PyObject_GetAttrString(meter, "_count")) == NULL
        || meter_ll(meter, "_max_flows", &c->max_flows) < 0 || meter_ll(meter, "_hot_pk", &c->hot_pk) < 0
        || meter_ll(meter, "evidence_packets", &c->ev_packets) < 0
        || meter_ll(meter, "evidence_max_flows", &c->ev_max_flows) < 0
        || meter_ll(meter, "_text_cache_max", &c->text_max) < 0 || meter_ll(meter, "_own_text", &c->own_text) < 0
        || attr_d(meter, "_upd", &c->upd) < 0 || attr_d(meter, "_active", &c->active) < 0
        || attr_d(meter, "_hot_iv", &c->hot_iv) < 0) {
        nf_clear(c);
        return -1;
    }
    if (!PyDict_CheckExact(c->text_cache) || !PyUnicode_Check(c->prefix)) {
        nf_clear(c);
        PyErr_SetString(PyExc_TypeError, "the meter's _text_cache / _prefix are not a dict / str");
        return -1;
    }
    return 0;
}

/* a MAC's text as _mac_text and format_mac write it (lowercase hex pairs, ':' between) at o; returns its end */
static char *mac_text(char *o, const unsigned char *m) {
    static const char hx[] = "0123456789abcdef";
    for (int k = 0; k < 6; k++) {
        if (k)
            *o++ = ':';
        *o++ = hx[m[k] >> 4];
        *o++ = hx[m[k] & 15];
    }
    return o;
}

/* _ip_text / _mac_text: the shared text from the cache; else made here as those methods make it (inet_ntop's
 * text of 4 or 16 bytes, a MAC's lowercase hex pairs) and cached as they cache it (the cache emptied when full),
 * or by the meter's method where it is not FlowMeter's own */
static PyObject *cached_text(NewFlow *c, PyObject *ckey, PyObject *method, PyObject *a1, PyObject *a2) {
    PyObject *t = PyDict_GetItemWithError(c->text_cache, ckey);
    if (t != NULL) {
        Py_INCREF(t);
        return t;
    }
    if (PyErr_Occurred())
        return NULL;
    char text[INET6_ADDRSTRLEN + 1];
    const char *made = NULL;
    if (method == c->m_ip_text && c->own_text && PyBytes_CheckExact(a1)
        && (PyBytes_GET_SIZE(a1) == 4 || PyBytes_GET_SIZE(a1) == 16))
        made = inet_ntop(PyBytes_GET_SIZE(a1) == 4 ? AF_INET : AF_INET6, PyBytes_AS_STRING(a1), text, sizeof text);
    else if (method == c->m_mac_text && c->own_text && PyBytes_CheckExact(ckey) && PyBytes_GET_SIZE(ckey) == 7) {
        *mac_text(text, (const unsigned char *)PyBytes_AS_STRING(ckey) + 1) = 0;
        made = text;
    }
    if (made == NULL)
        return PyObject_CallFunctionObjArgs(method, a1, a2, NULL);
    t = PyUnicode_FromString(made);
    if (t == NULL)
        return NULL;
    if (PyDict_GET_SIZE(c->text_cache) >= c->text_max)
        PyDict_Clear(c->text_cache);
    if (PyDict_SetItem(c->text_cache, ckey, t) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static inline int nput(PyObject *f, int k, PyObject *v) {   /* steals v */
    if (v == NULL)
        return -1;
    PyObject *old = NSLOT(f, k);
    NSLOT(f, k) = v;
    Py_XDECREF(old);
    return 0;
}

static PyObject *s_rst = NULL;   /* "rst": an end reason */

/* FlowMeter._tcp_close(f, ts, flags, fwd): a RST closes the flow, a FIN marks its direction and the second
 * direction's closes it; a closed flow goes to the end of the meter's _closed (a deque: ``*append`` is its
 * append, fetched on first use and released by the caller).  0, or -1 with an exception. */
static int tcp_close(PyObject *meter, PyObject *f, PyObject *tso, uint32_t flags, int fwd, PyObject **append) {
    PyObject *why = s_rst;
    if (!(flags & 0x04)) {
        PyObject *fo = NSLOT(f, N_FIN);
        long fin = fo ? PyLong_AsLong(fo) : -1;
        if (fo == NULL || (fin == -1 && PyErr_Occurred())) {
            if (fo == NULL)
                PyErr_SetString(PyExc_AttributeError, "Flow.fin is not set");
            return -1;
        }
        fin |= fwd ? 1 : 2;
        if (nput(f, N_FIN, PyLong_FromLong(fin)) < 0)
            return -1;
        if (fin != 3)
            return 0;
        why = s_fin;
    }
    if (*append == NULL) {
        PyObject *closed = PyObject_GetAttrString(meter, "_closed");
        *append = closed ? PyObject_GetAttrString(closed, "append") : NULL;
        Py_XDECREF(closed);
        if (*append == NULL)
            return -1;
    }
    PyObject *one = PyLong_FromLong(1);   /* CLOSED */
    if (one == NULL)
        return -1;
    put(f, STATE, one);
    if (nput(f, N_END_REASON, ref(why)) < 0 || nput(f, N_CLOSED_AT, ref(tso)) < 0)
        return -1;
    PyObject *r = PyObject_CallOneArg(*append, f);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static inline int fput(PyObject *f, int k, PyObject *v) {   /* steals v */
    if (v == NULL)
        return -1;
    put(f, k, v);
    return 0;
}

static inline int rput(PyObject *f, int k, PyObject *v) {   /* steals v */
    if (v == NULL)
        return -1;
    PyObject **p = (PyObject **)((char *)f + rec_offs[k]);
    PyObject *old = *p;
    *p = v;
    Py_XDECREF(old);
    return 0;
}


/* "<prefix>-<n>", as _new_flow's f"{self._prefix}-{n}" (an ASCII prefix: one copy; else the formatter) */
static PyObject *flow_id_text(PyObject *prefix, long long n) {
    if (!PyUnicode_IS_COMPACT_ASCII(prefix) || n < 0)
        return PyUnicode_FromFormat("%U-%lld", prefix, n);
    char digits[24], *d = digits + sizeof digits;
    unsigned long long x = (unsigned long long)n;
    do {
        *--d = (char)('0' + x % 10);
        x /= 10;
    } while (x);
    Py_ssize_t pl = PyUnicode_GET_LENGTH(prefix), dl = (Py_ssize_t)(digits + sizeof digits - d);
    PyObject *t = PyUnicode_New(pl + 1 + dl, 127);
    if (t == NULL)
        return NULL;
    char *o = (char *)PyUnicode_DATA(t);
    memcpy(o, PyUnicode_DATA(prefix), (size_t)pl);
    o[pl] = '-';
    memcpy(o + pl + 1, d, (size_t)dl);
    return t;
}

/*
 * FlowMeter._new_flow(key, ts, frame, ver, proto, src, dst, sp, dp, flags, vlan, vlans, 0, "") for a TCP/UDP
 * packet of the loop, step by step in its order; returns the flow (a new reference), *fwd as it returns it.
 * key: proto + src + dst + sport + dport [+ b"/<vlan>"] (alen-byte addresses).
 */
/* a decapsulated frame's tunnel, for its new flow (decode.tunnel_outer's answer, found by the loop's own parse) */
typedef struct {
    PyObject *name;        /* borrowed: s_tun_gtp / s_tun_ipip; NULL for a frame that is not tunnelled */
    PyObject *counter;     /* borrowed: the meter's tunnel_<name>_flows counter name */
    const unsigned char *src, *dst;   /* the outer IP header's addresses */
    int alen;
    unsigned long id;      /* GTP-U TEID, VXLAN VNI; 0 for IP-in-IP */
    long mac;              /* the Ethernet header whose MACs the flow takes: 0, or a VXLAN, GRE or ERSPAN inner frame's */
} Tunnel;

/* bind_decode(l2_names, proto_names, proto_flows, frag_max): decode()'s tables for the frames the loop meters
 * beyond TCP/UDP/ICMP (flows.py passes them from decode.py and its own constants):
 *   l2_names: {ethertype: counter name} of the non-IP protocols decode() counts (KIND_L2);
 *   proto_names: {IP protocol: transport name} (decode.transport_name's table; other numbers as their text);
 *   proto_flows: {IP protocol: counter of its flows} (_SPECIAL_PROTO_COUNTERS' names);
 *   frag_max: the meter's cache of first fragments' ports holds at most this many (_FRAG_CACHE_MAX).
 * Unbound, such frames go to Python as before. */
static PyObject *l2_names = NULL, *proto_names = NULL, *proto_flows = NULL;
static Py_ssize_t frag_max = 0;

static PyObject *bind_decode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *a, *b, *c;
    Py_ssize_t fm;
    if (!PyArg_ParseTuple(args, "O!O!O!n", &PyDict_Type, &a, &PyDict_Type, &b, &PyDict_Type, &c, &fm))
        return NULL;
    if (fm < 1) {
        PyErr_SetString(PyExc_ValueError, "bind_decode: frag_max must be >= 1");
        return NULL;
    }
    Py_INCREF(a);
    Py_XSETREF(l2_names, a);
    Py_INCREF(b);
    Py_XSETREF(proto_names, b);
    Py_INCREF(c);
    Py_XSETREF(proto_flows, c);
    frag_max = fm;
    Py_RETURN_NONE;
}

/* decode.transport_name(proto), a new reference */
static PyObject *transport_of(int proto) {
    if (proto == 6)
        return ref(s_tcp_name);
    if (proto == 17)
        return ref(s_udp_name);
    if (proto == 1 && s_icmp_name != NULL)
        return ref(s_icmp_name);
    if (proto == 58 && s_icmp6_name != NULL)
        return ref(s_icmp6_name);
    if (proto_names != NULL) {
        PyObject *k = PyLong_FromLong(proto), *v = k ? PyDict_GetItemWithError(proto_names, k) : NULL;
        Py_XDECREF(k);
        if (v != NULL && PyUnicode_Check(v) && PyUnicode_GET_LENGTH(v) > 0)
            return ref(v);
        if (PyErr_Occurred())
            return NULL;
    }
    return PyUnicode_FromFormat("%d", proto);
}

static PyObject *new_flow(NewFlow *c, PyObject *meter, PyObject *key, PyObject *tso, PyObject *frame, int ver,
                          int proto, int alen, uint32_t sp, uint32_t dp, uint32_t flags, PyObject *vlans, int icmp_tc,
                          const Tunnel *tun, int *fwd) {
    if (c->ctr->nflows >= c->max_flows) {
        PyObject *r = PyObject_CallNoArgs(c->m_evict);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    const char *k = PyBytes_AS_STRING(key);
    Py_ssize_t klen = PyBytes_GET_SIZE(key);
    PyObject *src = PyBytes_FromStringAndSize(k + 1, alen), *dst = PyBytes_FromStringAndSize(k + 1 + alen, alen);
    PyObject *rkey = PyBytes_FromStringAndSize(NULL, klen);
    PyObject *f = NULL, *K = NULL, *R = NULL, *t1 = NULL, *t2 = NULL, *fid = NULL, *r = NULL;
    PyObject *osrc = NULL, *odst = NULL;
    if (src == NULL || dst == NULL || rkey == NULL)
        goto fail;
    if (tun->name != NULL) {
        osrc = PyBytes_FromStringAndSize((const char *)tun->src, tun->alen);
        odst = PyBytes_FromStringAndSize((const char *)tun->dst, tun->alen);
        if (osrc == NULL || odst == NULL)
            goto fail;
    }
    {   /* rkey = proto + dst + src + dport + sport [+ the same suffix] */
        char *rk = PyBytes_AS_STRING(rkey);
        memcpy(rk, k, (size_t)klen);
        memcpy(rk + 1, k + 1 + alen, (size_t)alen);
        memcpy(rk + 1 + alen, k + 1, (size_t)alen);
        memcpy(rk + 1 + 2 * alen, k + 3 + 2 * alen, 2);
        memcpy(rk + 3 + 2 * alen, k + 1 + 2 * alen, 2);
    }
    f = PyBaseObject_Type.tp_new(flow_type, empty_tuple, NULL);
    if (f == NULL)
        goto fail;
    fid = flow_id_text(c->prefix, ++c->ctr->next_id);
    if (fid == NULL)
        goto fail;
    /* Flow.__init__'s values, then _new_flow's */
    PyObject *z = PyLong_FromLong(0);
    if (fput(f, S_PKTS, ref(z)) < 0 || fput(f, D_PKTS, ref(z)) < 0 || fput(f, S_BYTES, ref(z)) < 0
        || fput(f, D_BYTES, ref(z)) < 0 || fput(f, S_FLAGS, ref(z)) < 0 || fput(f, D_FLAGS, ref(z)) < 0
        || nput(f, N_STATE, ref(z)) < 0 || nput(f, N_FIN, ref(z)) < 0 || nput(f, N_CLOSED_AT, ref(zero_float)) < 0
        || nput(f, N_END_REASON, ref(s_empty)) < 0 || nput(f, N_SAMPLE_SEQ, ref(z)) < 0
        || nput(f, N_PENDING, ref(z)) < 0 || nput(f, N_VERDICT, ref(Py_None)) < 0
        || nput(f, N_VERDICT_FINAL, ref(Py_False)) < 0 || nput(f, N_DEADLINE, ref(zero_float)) < 0
        || fput(f, EV, ref(Py_None)) < 0 || fput(f, EV_SIZE, ref(z)) < 0 || nput(f, N_HOT_N, ref(z)) < 0
        || fput(f, REC_BYTES, ref(z)) < 0
        || fput(f, FLOW_ID, ref(fid)) < 0 || nput(f, N_VER, PyLong_FromLong(ver)) < 0
        || nput(f, N_PROTO, PyLong_FromLong(proto)) < 0
        || rput(f, R_TRANSPORT, transport_of(proto)) < 0
        || rput(f, R_SOURCE, ref(c->source)) < 0) {
        Py_DECREF(z);
        goto fail;
    }
    Py_DECREF(z);
    int smac = (int)tun->mac + 6, dmac = (int)tun->mac;
    *fwd = 1;
    K = key;
    R = rkey;
    if (proto == 6 && (flags & 0x12) == 0x12) {   /* first seen packet is a SYN-ACK: its receiver is the client */
        PyObject *tmp = src;
        src = dst;
        dst = tmp;
        tmp = osrc;
        osrc = odst;
        odst = tmp;
        uint32_t tp = sp;
        sp = dp;
        dp = tp;
        smac = (int)tun->mac;
        dmac = (int)tun->mac + 6;
        K = rkey;
        R = key;
        *fwd = 0;
    }
    if (nput(f, N_KEY, ref(K)) < 0 || nput(f, N_RKEY, ref(R)) < 0 || fput(f, S_STAMP, ref(tso)) < 0
        || fput(f, D_STAMP, ref(tso)) < 0)
        goto fail;
    t1 = PyTuple_Pack(2, f, Py_True);
    if (t1 == NULL || PyObject_SetItem(c->table, K, t1) < 0)
        goto fail;
    int same = PyBytes_GET_SIZE(R) == PyBytes_GET_SIZE(K) && memcmp(PyBytes_AS_STRING(R), PyBytes_AS_STRING(K),
                                                                      (size_t)PyBytes_GET_SIZE(K)) == 0;
    if (!same) {
        t2 = PyTuple_Pack(2, f, Py_False);
        if (t2 == NULL || PyObject_SetItem(c->table, R, t2) < 0)
            goto fail;
    }
    if (!*fwd) {
        r = PyObject_CallOneArg(c->move_to_end, R);
        if (r == NULL)
            goto fail;
        Py_CLEAR(r);
    }
    c->ctr->nflows++;
    if (rput(f, R_SPORT, PyLong_FromUnsignedLong(sp)) < 0 || rput(f, R_DPORT, PyLong_FromUnsignedLong(dp)) < 0
        || rput(f, R_SRC_IP, cached_text(c, src, c->m_ip_text, src, NULL)) < 0
        || rput(f, R_DST_IP, cached_text(c, dst, c->m_ip_text, dst, NULL)) < 0)
        goto fail;
    for (int side = 0; side < 2; side++) {
        int off = side == 0 ? smac : dmac;
        char mk[7];
        mk[0] = 'M';
        memcpy(mk + 1, PyBytes_AS_STRING(frame) + off, 6);
        PyObject *ck = PyBytes_FromStringAndSize(mk, 7), *offo = ck ? PyLong_FromLong(off) : NULL;
        PyObject *t = offo ? cached_text(c, ck, c->m_mac_text, frame, offo) : NULL;
        Py_XDECREF(ck);
        Py_XDECREF(offo);
        if (rput(f, side == 0 ? R_SRC_MAC : R_DST_MAC, t) < 0)
            goto fail;
    }
    /* ICMP/ICMPv6: the first packet's (type, code), for the Community ID */
    PyObject *ic = icmp_tc < 0 ? ref(Py_None) : Py_BuildValue("(ii)", icmp_tc >> 8, icmp_tc & 255);
    /* a tunnelled flow's outer endpoints (as texts, swapped with the flow's direction) and tunnel id */
    PyObject *ou = Py_None;
    if (tun->name != NULL) {
        PyObject *a = cached_text(c, osrc, c->m_ip_text, osrc, NULL);
        PyObject *b = a ? cached_text(c, odst, c->m_ip_text, odst, NULL) : NULL;
        ou = b ? Py_BuildValue("(NNk)", a, b, tun->id) : NULL;
        if (ou == NULL) {
            Py_XDECREF(a);
            Py_XDECREF(b);
            Py_XDECREF(ic);
            goto fail;
        }
    } else {
        Py_INCREF(ou);
    }
    if (rput(f, R_VLAN_IDS, ref(vlans)) < 0 || rput(f, R_TUNNEL, ref(tun->name ? tun->name : s_empty)) < 0
        || rput(f, R_ICMP, ic) < 0 || rput(f, R_OUTER, ou) < 0 || rput(f, R_FIRST, ref(tso)) < 0
        || fput(f, LAST, ref(tso)) < 0
        || nput(f, N_LAST_UPDATE, ref(tso)) < 0
        || fput(f, NEXT_CHECK, PyFloat_FromDouble(PyFloat_AS_DOUBLE(tso) + (c->upd < c->active ? c->upd : c->active))) < 0)
        goto fail;
    if (c->hot_pk && proto != 6 && proto != 17) {   /* ICMP: hot checks every hot_interval_s of its packets */
        if (c->hot_iv < c->upd
            && fput(f, NEXT_CHECK, PyFloat_FromDouble(PyFloat_AS_DOUBLE(tso) + (c->hot_iv < c->active ? c->hot_iv
                                                                                                      : c->active))) < 0)
            goto fail;
    } else if (c->hot_pk) {   /* TCP/UDP: no per-flow hot checks; a pure SYN's flow is young */
        if (nput(f, N_HOT_N, PyLong_FromLong(-1)) < 0)
            goto fail;
        if (proto == 6 && (flags & 0x12) == 0x02) {
            r = PyObject_CallOneArg(c->young_append, f);
            if (r == NULL)
                goto fail;
            Py_CLEAR(r);
        }
    }
    if (fput(f, IS_DNS, ref((sp == 53 || dp == 53) && (proto == 6 || proto == 17) ? Py_True : Py_False)) < 0)
        goto fail;
    if (c->ev_packets) {
        if (c->ctr->ev_flows < c->ev_max_flows) {
            if (fput(f, EV, PyByteArray_FromStringAndSize(NULL, 0)) < 0)
                goto fail;
            c->ctr->ev_flows++;
        }
    }
    if (fput(f, SAMPLING, PyLong_FromLong(3)) < 0 || fput(f, SD, ref(Py_None)) < 0 || fput(f, DD, ref(Py_None)) < 0
        || fput(f, DIRS, ref(s_empty)) < 0)
        goto fail;
    c->ctr->flows_created++;
    if (proto != 6 && proto != 17 && proto_flows != NULL && PyDict_GET_SIZE(proto_flows) > 0) {
        /* OSPF, VRRP, IGMP, PIM: their flows counted (_SPECIAL_PROTO_COUNTERS) */
        PyObject *pk = PyLong_FromLong(proto), *nm = pk ? PyDict_GetItemWithError(proto_flows, pk) : NULL;
        Py_XDECREF(pk);
        if (nm == NULL && PyErr_Occurred())
            goto fail;
        if (nm != NULL) {
            r = PyObject_CallOneArg(c->m_count, nm);
            if (r == NULL)
                goto fail;
            Py_CLEAR(r);
        }
    }
    if (proto == 17 && (sp == 3784 || sp == 3785 || sp == 4784 || dp == 3784 || dp == 3785 || dp == 4784)) {
        r = PyObject_CallOneArg(c->m_count, s_bfd);
        if (r == NULL)
            goto fail;
        Py_CLEAR(r);
    }
    if (tun->name != NULL) {
        r = PyObject_CallOneArg(c->m_count, tun->counter);
        if (r == NULL)
            goto fail;
        Py_CLEAR(r);
    }
    if (emit_record(c->raw, c->idx, c->sink_flow, f, s_start, tso, c->probe, s_unknown, s_empty, s_empty, s_empty, s_empty) < 0)
        goto fail;
    Py_DECREF(src);
    Py_DECREF(dst);
    Py_DECREF(rkey);
    Py_XDECREF(t1);
    Py_XDECREF(t2);
    Py_DECREF(fid);
    Py_XDECREF(osrc);
    Py_XDECREF(odst);
    return f;
fail:
    Py_XDECREF(osrc);
    Py_XDECREF(odst);
    Py_XDECREF(src);
    Py_XDECREF(dst);
    Py_XDECREF(rkey);
    Py_XDECREF(f);
    Py_XDECREF(t1);
    Py_XDECREF(t2);
    Py_XDECREF(fid);
    return NULL;
}

/*
 * sample(f, ts, fwd, vlans, final, probe) -> FlowSample: the event FlowMeter._emit_sample builds, the same
 * dict key for key in its order, the instance as flows._build makes it (bind_sample(FlowSample) first;
 * False when the model's fields are not exactly these).
 */
enum {
    Q_PROBE, Q_FLOW_ID, Q_EVENT_TYPE, Q_TRANSPORT, Q_SRC_IP, Q_SRC_PORT, Q_DST_IP, Q_DST_PORT, Q_VLAN_ID,
    Q_ICMP_TYPE, Q_ICMP_CODE, Q_SOURCE, Q_FIRST_SEEN, Q_SRC_MAC, Q_DST_MAC, Q_TIMESTAMP, Q_SEQ_NO, Q_FINAL,
    Q_S_PKTS, Q_D_PKTS, Q_SRC_PAYLOADS, Q_DST_PAYLOADS, Q_PAYLOAD_DIRS, Q_VLAN_IDS, Q_S_NEXT_SEQ, Q_S_ACK,
    Q_D_NEXT_SEQ, Q_D_ACK, Q_TRIGGER_TIME, Q_TRIGGER_FROM_SRC, NQKEYS
};
static const char *sample_key_names[NQKEYS] = {
    "probe", "flow_id", "event_type", "transport", "src_ip", "src_port", "dst_ip", "dst_port", "vlan_id",
    "icmp_type", "icmp_code", "source", "first_seen", "src_mac", "dst_mac", "timestamp", "seq_no", "final",
    "src2dst_packets", "dst2src_packets", "src_payloads", "dst_payloads", "payload_dirs", "vlan_ids",
    "src2dst_next_seq", "src2dst_ack", "dst2src_next_seq", "dst2src_ack", "trigger_time", "trigger_from_src",
};
static PyObject *sample_keys[NQKEYS], *sample_template = NULL, *sample_cls = NULL, *sample_fields_set = NULL;
static PyObject *s_sample_type = NULL;

static PyObject *bind_sample(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cls;
    if (!PyArg_ParseTuple(args, "O!", &PyType_Type, &cls))
        return NULL;
    if (!new_bound || off_fields_set < 0) {
        PyErr_SetString(PyExc_RuntimeError, "bind_record() first");
        return NULL;
    }
    PyObject *fields = PyObject_GetAttrString(cls, "model_fields");
    PyObject *fs = fields ? PySet_New(fields) : NULL;
    Py_XDECREF(fields);
    if (fs == NULL)
        return NULL;
    int same = PySet_GET_SIZE(fs) == NQKEYS;
    for (int k = 0; same && k < NQKEYS; k++) {
        int has = PySet_Contains(fs, sample_keys[k]);
        if (has < 0) {
            Py_DECREF(fs);
            return NULL;
        }
        same = has;
    }
    if (!same) {
        Py_DECREF(fs);
        Py_RETURN_FALSE;
    }
    Py_XSETREF(sample_fields_set, fs);
    Py_INCREF(cls);
    Py_XSETREF(sample_cls, cls);
    Py_RETURN_TRUE;
}

/* a _Dir slot, or the empty direction's value (_EMPTY_DIR) when the direction has no state */
static PyObject *dir_value(PyObject *d, int k) {
    if (d == Py_None) {
        if (k == D_PAYLOADS)
            return PyList_New(0);
        return PyLong_FromLong(0);
    }
    PyObject *v = get(d, k);
    if (v == NULL)
        return NULL;
    if (k == D_PAYLOADS)
        return PySequence_List(v);
    Py_INCREF(v);
    return v;
}

/* a sample's values, in the order of its keys (Q_; new references): the flow's as FlowMeter._sample_event
 * takes them (0; -1: an error, nothing left to clear) */
static int sample_values(PyObject *f, PyObject *ts, PyObject *fwd, PyObject *vlans, PyObject *final, PyObject *probe,
                         PyObject *vals[NQKEYS]) {
    if (sample_cls == NULL || !PyObject_TypeCheck(f, flow_type)) {
        PyErr_SetString(PyExc_TypeError, "sample() needs bind_sample() and a Flow");
        return -1;
    }
    PyObject *sd = SLOT(f, SD), *dd = SLOT(f, DD), *vl = RSLOT(f, R_VLAN_IDS), *icmp = RSLOT(f, R_ICMP);
    PyObject *dirs = SLOT(f, DIRS), *seq = NSLOT(f, N_SAMPLE_SEQ);
    if (sd == NULL || dd == NULL || vl == NULL || icmp == NULL || dirs == NULL || seq == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a Flow slot a sample needs is not set");
        return -1;
    }
    if ((sd != Py_None && !PyObject_TypeCheck(sd, dir_type)) || (dd != Py_None && !PyObject_TypeCheck(dd, dir_type))) {
        PyErr_SetString(PyExc_TypeError, "Flow.sd/dd is not a _Dir");
        return -1;
    }
    int hv = PyObject_IsTrue(vlans);
    if (hv < 0)
        return -1;
    PyObject *borrowed[NQKEYS] = {NULL};
    borrowed[Q_PROBE] = probe;
    borrowed[Q_FLOW_ID] = SLOT(f, FLOW_ID);
    borrowed[Q_EVENT_TYPE] = s_sample_type;
    borrowed[Q_TRANSPORT] = RSLOT(f, R_TRANSPORT);
    borrowed[Q_SRC_IP] = RSLOT(f, R_SRC_IP);
    borrowed[Q_SRC_PORT] = RSLOT(f, R_SPORT);
    borrowed[Q_DST_IP] = RSLOT(f, R_DST_IP);
    borrowed[Q_DST_PORT] = RSLOT(f, R_DPORT);
    borrowed[Q_SOURCE] = RSLOT(f, R_SOURCE);
    borrowed[Q_FIRST_SEEN] = RSLOT(f, R_FIRST);
    borrowed[Q_SRC_MAC] = RSLOT(f, R_SRC_MAC);
    borrowed[Q_DST_MAC] = RSLOT(f, R_DST_MAC);
    borrowed[Q_TIMESTAMP] = ts;
    borrowed[Q_SEQ_NO] = seq;
    borrowed[Q_FINAL] = final;
    borrowed[Q_S_PKTS] = SLOT(f, S_PKTS);
    borrowed[Q_D_PKTS] = SLOT(f, D_PKTS);
    borrowed[Q_TRIGGER_TIME] = ts;
    borrowed[Q_TRIGGER_FROM_SRC] = fwd;
    for (int k = 0; k < NQKEYS; k++)
        vals[k] = NULL;
    for (int k = 0; k < NQKEYS; k++) {
        PyObject *v = borrowed[k];
        switch (k) {
        case Q_VLAN_ID: v = first_or(vl, 0, zero_int); break;
        case Q_ICMP_TYPE: v = first_or(icmp, 0, Py_None); break;
        case Q_ICMP_CODE: v = first_or(icmp, 1, Py_None); break;
        case Q_SRC_PAYLOADS: v = dir_value(sd, D_PAYLOADS); break;
        case Q_DST_PAYLOADS: v = dir_value(dd, D_PAYLOADS); break;
        case Q_PAYLOAD_DIRS: v = PySequence_GetSlice(dirs, 0, 256); break;
        case Q_VLAN_IDS: v = PySequence_List(hv ? vlans : vl); break;
        case Q_S_NEXT_SEQ: v = dir_value(sd, D_NEXT_SEQ); break;
        case Q_S_ACK: v = dir_value(sd, D_ACK); break;
        case Q_D_NEXT_SEQ: v = dir_value(dd, D_NEXT_SEQ); break;
        case Q_D_ACK: v = dir_value(dd, D_ACK); break;
        default:
            if (v == NULL)
                PyErr_Format(PyExc_AttributeError, "a Flow slot for %s is not set", sample_key_names[k]);
            else
                Py_INCREF(v);
        }
        if (v == NULL) {
            for (int j = 0; j < k; j++)
                Py_DECREF(vals[j]);
            return -1;
        }
        vals[k] = v;
    }
    return 0;
}

static void sample_values_clear(PyObject *vals[NQKEYS]) {
    for (int k = 0; k < NQKEYS; k++)
        Py_CLEAR(vals[k]);
}

/* the FlowSample of these values, as flows._build makes it (a new reference) */
static PyObject *sample_object(PyObject *vals[NQKEYS]) {
    PyObject *d = PyDict_Copy(sample_template);
    if (d == NULL)
        return NULL;
    for (int k = 0; k < NQKEYS; k++) {
        if (PyDict_SetItem(d, sample_keys[k], vals[k]) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    PyObject *m = PyBaseObject_Type.tp_new((PyTypeObject *)sample_cls, empty_tuple, NULL);
    if (m == NULL || PyObject_GenericSetDict(m, d, NULL) < 0) {
        Py_XDECREF(m);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(d);
    Py_INCREF(sample_fields_set);
    Py_XSETREF(MSLOT(m, off_fields_set), sample_fields_set);
    Py_INCREF(Py_None);
    Py_XSETREF(MSLOT(m, off_extra), Py_None);
    Py_INCREF(Py_None);
    Py_XSETREF(MSLOT(m, off_private), Py_None);
    return m;
}

static PyObject *sample_event(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *f, *ts, *fwd, *vlans, *final, *probe, *vals[NQKEYS];
    if (!PyArg_ParseTuple(args, "OOOOOO", &f, &ts, &fwd, &vlans, &final, &probe))
        return NULL;
    if (sample_values(f, ts, fwd, vlans, final, probe, vals) < 0)
        return NULL;
    PyObject *m = sample_object(vals);
    sample_values_clear(vals);
    return m;
}

/* ---- evidence rings: flows.ring_add in C.  A flow's ring is a bytearray of its last packets, oldest first: per
 * packet a head (its time, a native double, and its frame's length, a native uint32) then the frame (cut to
 * cap bytes); Flow.ev_size is how many packets it holds.  Above trim packets the oldest go until keep are left;
 * above cap frame bytes, the oldest go until at most half of that is left or only the newest packet is. */
#define EV_HEAD 12
static int ring_push(PyObject *f, PyObject *ev, double ts, const unsigned char *frame, Py_ssize_t flen,
                     Py_ssize_t trim, Py_ssize_t keep, Py_ssize_t cap) {
    long long n;
    if (!PyByteArray_CheckExact(ev)) {
        PyErr_SetString(PyExc_TypeError, "an evidence ring is a bytearray");
        return -1;
    }
    if (slot_ll(f, EV_SIZE, &n) < 0)
        return -1;
    if (flen > cap)
        flen = cap;
    if (flen > 0xFFFFFFFFLL) {
        PyErr_SetString(PyExc_ValueError, "an evidence frame above 4 GB");
        return -1;
    }
    PyByteArrayObject *ba = (PyByteArrayObject *)ev;
    Py_ssize_t old = PyByteArray_GET_SIZE(ev), need = old + EV_HEAD + flen;
    if (need + (ba->ob_start - ba->ob_bytes) + 1 <= ba->ob_alloc) {   /* room: PyByteArray_Resize's quick path */
        Py_SET_SIZE(ev, need);
        ba->ob_start[need] = '\0';
    } else {
        /* bytearray grows to the exact size when the growth is above an eighth (a copy per packet here): room
           for a quarter more first (a full ring's memory: its share and a quarter), then the size wanted, which
           it takes without moving */
        if (PyByteArray_Resize(ev, need + need / 4) < 0 || PyByteArray_Resize(ev, need) < 0)
            return -1;
    }
    char *o = PyByteArray_AS_STRING(ev) + old;
    uint32_t ln = (uint32_t)flen;
    memcpy(o, &ts, 8);
    memcpy(o + 8, &ln, 4);
    memcpy(o + EV_HEAD, frame, (size_t)flen);
    n++;
    if (n > trim || need - EV_HEAD * n > cap) {
        const char *p = PyByteArray_AS_STRING(ev);
        Py_ssize_t fb = need - EV_HEAD * n, pos = 0;
        long long cut = n > trim ? n - keep : 0;
        for (long long k = 0; k < cut; k++) {
            memcpy(&ln, p + pos + 8, 4);
            pos += EV_HEAD + ln;
            fb -= ln;
        }
        if (fb > cap) {
            while (n - cut > 1 && fb > cap / 2) {
                memcpy(&ln, p + pos + 8, 4);
                pos += EV_HEAD + ln;
                fb -= ln;
                cut++;
            }
        }
        /* a deletion at the front: CPython's bytearray moves its start instead of the bytes */
        if (pos > 0 && PySequence_DelSlice(ev, 0, pos) < 0)
            return -1;
        n -= cut;
    }
    return put_ll(f, EV_SIZE, n);
}

/* ring_add(flow, ts, frame, trim, keep, cap): the compiled twin of flows.ring_add, for its tests */
static PyObject *ring_add(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *f, *tso, *frame;
    Py_ssize_t trim, keep, cap;
    if (!PyArg_ParseTuple(args, "OO!O!nnn", &f, &PyFloat_Type, &tso, &PyBytes_Type, &frame, &trim, &keep, &cap))
        return NULL;
    if (flow_type == NULL || !PyObject_TypeCheck(f, flow_type) || cap < 1 || keep < 1 || trim < keep) {
        PyErr_SetString(PyExc_ValueError, "ring_add needs a bound Flow, cap >= 1 and 1 <= keep <= trim");
        return NULL;
    }
    PyObject *ev = get(f, EV);
    if (ev == NULL || ring_push(f, ev, PyFloat_AS_DOUBLE(tso), (const unsigned char *)PyBytes_AS_STRING(frame),
                                PyBytes_GET_SIZE(frame), trim, keep, cap) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *rec_float_json;   /* bind_flat's: a float as orjson writes it (below) */

/* a raw batch's index entry (_fastpath.c's pcap_records with raw): a record's time, its frame's offset and length */
typedef struct {
    double ts;
    int64_t off, len;
} RawEntry;
#define RAW_ENTRY ((Py_ssize_t)sizeof(RawEntry))

/* a raw batch's buffer and index views given back (nothing for a list of records) */
static void raw_release(int raw, Py_buffer *buf, Py_buffer *index) {
    if (raw) {
        PyBuffer_Release(buf);
        PyBuffer_Release(index);
    }
}

/* run()'s state of _process_py's first steps, which every record takes */
/* what the housekeeping reads of the meter, read once per run() (or expire()) call: this file's time
   profile (~12 packets per second of packet time) has a housekeeping every ~12 packets */
typedef struct {
    PyObject *table, *closed, *young, *young2;   /* the meter's table, _closed, _young, _young2 (strong) */
    double idle, grace, hot_iv;
    int loaded;
} House;

static int house_load(House *h, PyObject *meter) {
    if (h->loaded)
        return 0;
    if ((h->table = mattr(meter, "table")) == NULL || (h->closed = mattr(meter, "_closed")) == NULL
        || (h->young = mattr(meter, "_young")) == NULL || (h->young2 = mattr(meter, "_young2")) == NULL
        || attr_d(meter, "_idle", &h->idle) < 0 || attr_d(meter, "_grace", &h->grace) < 0
        || attr_d(meter, "_hot_iv", &h->hot_iv) < 0)
        return -1;
    if (!PyDict_Check(h->table)) {
        PyErr_SetString(PyExc_TypeError, "the meter's table is not a dict");
        return -1;
    }
    h->loaded = 1;
    return 0;
}

static void house_clear(House *h) {
    Py_CLEAR(h->table);
    Py_CLEAR(h->closed);
    Py_CLEAR(h->young);
    Py_CLEAR(h->young2);
    h->loaded = 0;
}

typedef struct {
    long long npk, nbytes_all, dups;   /* records, their bytes, duplicate frames */
    PyObject *prev;                    /* the last frame (a strong reference), or NULL: at prev_p in a raw batch */
    const unsigned char *prev_p;       /* its bytes (NULL: none), prev_n of them */
    Py_ssize_t prev_n;
    double prev_ts, nh;                /* its time; the time of the next second's housekeeping */
    double now;                        /* the last housekeeping's clock (meter._now), when now_set */
    int house_c;                       /* the meter's _house_c: its _housekeep done here (house_in_c) */
    int now_set;                       /* a housekeeping here since the meter's _now and _next_house were set */
    House house;
} Step;

static PyObject *expire_now(PyObject *meter, PyObject *now_o, PyObject *why, House *h);

/* the previous frame's bytes from step->prev (after load_state) */
static inline void step_prev_from_obj(Step *st) {
    int b = st->prev != NULL && PyBytes_Check(st->prev);
    st->prev_p = b ? (const unsigned char *)PyBytes_AS_STRING(st->prev) : NULL;
    st->prev_n = b ? PyBytes_GET_SIZE(st->prev) : 0;
}

/* step->prev as an object (before store_state): a raw batch's frame copied */
static inline int step_prev_obj(Step *st) {
    if (st->prev != NULL)
        return 0;
    st->prev = st->prev_p ? PyBytes_FromStringAndSize((const char *)st->prev_p, st->prev_n) : ref(Py_None);
    if (st->prev == NULL)
        return -1;
    step_prev_from_obj(st);
    return 0;
}
static PyObject *s_idle;

/* FlowMeter._housekeep(now) where it ends flows in C (meter._house_c, set by process_batch): its clock, the young
 * SYN flows' check (Python, when there are any), then expire's two loops, without a Python frame per second */
/* FlowMeter._young_check(now): TCP flows opened by a SYN hot_interval_s ago (the deque _young, oldest first)
 * whose client has not ACKed: a hot record (the meter's _out) for each that got no SYN-ACK; one that got a
 * SYN-ACK goes to _young2, checked again at twice that age.  0, or -1 with an exception. */
static int young_check(PyObject *meter, PyObject *tso, House *h) {
    double now = PyFloat_AS_DOUBLE(tso), iv = h->hot_iv;
    PyObject *y = ref(h->young), *y2 = ref(h->young2), *popleft = iname("popleft");
    PyObject *append = iname("append"), *out = iname("_out"), *upd = iname("update");
    PyObject *hot_raw = NULL, *hot_to = NULL, *hot_probe = NULL;   /* sink.raw_hot, meter._sink_hot, meter.probe */
    int hot_tried = 0;
    long long n = 0;
    int rc = y2 && popleft && append && out && upd ? 0 : -1;
    double cut = now - iv;
    for (int k = 0; k < 2 && rc == 0; k++, cut -= iv) {
        PyObject *q = k ? y2 : y;
        for (;;) {
            Py_ssize_t len = PyObject_Length(q);
            if (len <= 0) {
                rc = len < 0 ? -1 : 0;
                break;
            }
            PyObject *f = PySequence_GetItem(q, 0);
            if (f == NULL) {
                rc = -1;
                break;
            }
            if (!PyObject_TypeCheck(f, flow_type)) {
                Py_DECREF(f);
                PyErr_SetString(PyExc_TypeError, "the meter's young flows hold something else than flows");
                rc = -1;
                break;
            }
            PyObject *fo = RSLOT(f, R_FIRST);
            double first = fo ? PyFloat_AsDouble(fo) : -1.0;
            if (fo == NULL || (first == -1.0 && PyErr_Occurred())) {
                if (fo == NULL)
                    PyErr_SetString(PyExc_AttributeError, "Flow.first is not set");
                Py_DECREF(f);
                rc = -1;
                break;
            }
            if (first > cut) {
                Py_DECREF(f);
                break;
            }
            PyObject *x = PyObject_CallMethodNoArgs(q, popleft);
            long long state, sfl, dfl;
            if (x == NULL || slot_ll(f, STATE, &state) < 0 || slot_ll(f, S_FLAGS, &sfl) < 0
                || slot_ll(f, D_FLAGS, &dfl) < 0) {
                Py_XDECREF(x);
                Py_DECREF(f);
                rc = -1;
                break;
            }
            Py_DECREF(x);
            if (state != 2 && !(sfl & 0x10)) {   /* not ENDED, the client has not ACKed */
                if (k == 0 && (dfl & 0x02))
                    x = PyObject_CallMethodOneArg(y2, append, f);
                else {
                    /* a hot record (meter._out(f, "update", ts, hot=True)): written here as _out writes it where
                     * the sink takes hot records as JSON (raw_hot) and the flow has no verdict (labels Unknown);
                     * else by _out */
                    if (!hot_tried && new_bound && rec_cls != NULL) {
                        hot_tried = 1;
                        PyObject *sink = mattr(meter, "sink");
                        hot_raw = sink ? sink_raw(sink, "raw_hot") : NULL;
                        Py_XDECREF(sink);
                        if (hot_raw != NULL && (hot_to = mattr(meter, "_sink_hot")) != NULL)
                            hot_probe = mattr(meter, "probe");
                        if (PyErr_Occurred()) {   /* no sink, _sink_hot or probe (a missing raw_hot is no error) */
                            Py_DECREF(f);
                            rc = -1;
                            break;
                        }
                    }
                    PyObject *v = hot_raw != NULL ? NSLOT(f, N_VERDICT) : NULL;
                    if (v == Py_None) {
                        x = emit_record(hot_raw, NULL, hot_to, f, upd, tso, hot_probe, s_unknown, s_empty, s_empty,
                                        s_empty, s_empty) < 0 ? NULL : ref(Py_None);
                    } else
                        x = PyObject_CallMethodObjArgs(meter, out, f, upd, tso, Py_True, NULL);
                    n++;
                }
                if (x == NULL) {
                    Py_DECREF(f);
                    rc = -1;
                    break;
                }
                Py_DECREF(x);
            }
            Py_DECREF(f);
        }
    }
    Py_XDECREF(y);
    Py_XDECREF(y2);
    Py_XDECREF(hot_raw);
    Py_XDECREF(hot_to);
    Py_XDECREF(hot_probe);
    if (rc == 0 && n)
        rc = meter_count(meter, "hot_records", n);
    return rc;
}

static int house_in_c(Step *st, PyObject *meter, PyObject *tso) {
    /* the clock (meter._now, ._next_house) is set on the meter before Python code runs and at the end (store_state) */
    st->now = PyFloat_AS_DOUBLE(tso);
    st->nh = st->now + 1.0;
    st->now_set = 1;
    if (house_load(&st->house, meter) < 0)
        return -1;
    int young = PyObject_IsTrue(st->house.young);
    if (young == 0)
        young = PyObject_IsTrue(st->house.young2);
    if (young < 0 || (young && young_check(meter, tso, &st->house) < 0))
        return -1;
    PyObject *r = expire_now(meter, tso, s_idle, &st->house);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* what _process_py does first with every record: counts it, tells a duplicate frame, and calls the meter's
 * _housekeep when a second has passed (or the clock jumped back); 0 or -1 (error) */
static inline int frame_step(Step *st, PyObject *meter, PyObject *m_housekeep, PyObject *tso, PyObject *frame,
                             const unsigned char *fr, Py_ssize_t len, PyObject **at_end) {
    double ts = PyFloat_AS_DOUBLE(tso);
    st->npk++;
    st->nbytes_all += len;
    if (st->prev_p != NULL && st->prev_n == len && ts - st->prev_ts < 0.005
        && (st->prev_p == fr || memcmp(st->prev_p, fr, (size_t)len) == 0))
        st->dups++;
    Py_XINCREF(frame);   /* NULL: a raw batch's record, where it is until run() returns (store_state copies it) */
    Py_XSETREF(st->prev, frame);
    st->prev_p = fr;
    st->prev_n = len;
    st->prev_ts = ts;
    if (ts >= st->nh || ts < st->nh - 2.0) {
        if (st->house_c) {
            int r = house_in_c(st, meter, tso);
            Py_CLEAR(*at_end);
            if (r < 0)
                return -1;
            st->nh = ts + 1.0;
            return 0;
        }
        PyObject *r0 = PyObject_CallOneArg(m_housekeep, tso);
        Py_CLEAR(*at_end);
        if (r0 == NULL)
            return -1;
        Py_DECREF(r0);
        PyObject *h = PyObject_GetAttr(meter, s_next_house);
        if (h == NULL)
            return -1;
        st->nh = PyFloat_AsDouble(h);
        Py_DECREF(h);
        if (st->nh == -1.0 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* DNS messages' and ARP packets' events (FlowMeter._dns, _non_ip) as their JSON, for a sink that takes them so
 * (raw_packets) */
typedef struct {
    int loaded;
    PyObject *raw, *probe, *source, *counters;
} PacketOut;
static int packet_out_load(PacketOut *o, PyObject *meter);
static void packet_out_clear(PacketOut *o);
static int dns_event(PacketOut *o, PyObject *f, PyObject *tso, const unsigned char *fr, long po, long pl, int proto,
                     int fwd, PyObject *vlans);
static int arp_event(PacketOut *o, PyObject *tso, const unsigned char *fr, long off, const uint32_t *vids, int nvl);
static int arp_py(PyObject *meter, PyObject *tso, PyObject *frame, long off, const uint32_t *vids, int nvl);

/* _process_py's handling of an IPv4 fragment (fragw: its offset and MF bits): a first fragment's ports are kept
 * under (src, dst, id, proto), the oldest entry dropped when the cache is full; a later fragment takes them from
 * there (counted as ip_fragments) or is an orphan (counted as ip_fragments_orphan, 0: not metered).
 * 1: meter the packet (sp, dp set for a later fragment); -1: error. */
static int frag_cache(PyObject *meter, uint32_t fragw, const unsigned char *addrs, int alen, uint32_t ipid, int proto,
                      uint32_t *sp, uint32_t *dp) {
    PyObject *cache = mattr(meter, "_frags");
    if (cache == NULL)
        return -1;
    PyObject *key = NULL, *v = NULL;
    int rc = -1;
    if (!PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "the meter's _frags is not a dict");
        goto done;
    }
    key = Py_BuildValue("(y#y#kI)", (const char *)addrs, (Py_ssize_t)alen, (const char *)addrs + alen,
                        (Py_ssize_t)alen, (unsigned long)ipid, (unsigned int)proto);
    if (key == NULL)
        goto done;
    if (fragw & 0x1FFF) {   /* a later fragment */
        PyObject *hit = PyDict_GetItemWithError(cache, key);   /* borrowed */
        if (hit == NULL) {
            rc = PyErr_Occurred() ? -1 : meter_count(meter, "ip_fragments_orphan", 1) < 0 ? -1 : 0;
            goto done;
        }
        long a, b;
        if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2
            || ((a = PyLong_AsLong(PyTuple_GET_ITEM(hit, 0))) == -1 && PyErr_Occurred())
            || ((b = PyLong_AsLong(PyTuple_GET_ITEM(hit, 1))) == -1 && PyErr_Occurred())) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "the meter's _frags holds something else than (sport, dport)");
            goto done;
        }
        *sp = (uint32_t)a;
        *dp = (uint32_t)b;
        rc = meter_count(meter, "ip_fragments", 1) < 0 ? -1 : 1;
        goto done;
    }
    /* a first fragment: its ports kept */
    if (PyDict_GET_SIZE(cache) >= frag_max) {
        Py_ssize_t pos = 0;
        PyObject *k0, *v0;
        if (PyDict_Next(cache, &pos, &k0, &v0)) {
            Py_INCREF(k0);
            int r = PyDict_DelItem(cache, k0);
            Py_DECREF(k0);
            if (r < 0)
                goto done;
        }
    }
    v = Py_BuildValue("(kk)", (unsigned long)*sp, (unsigned long)*dp);
    rc = v == NULL || PyDict_SetItem(cache, key, v) < 0 ? -1 : 1;
done:
    Py_XDECREF(v);
    Py_XDECREF(key);
    Py_DECREF(cache);
    return rc;
}

static PyObject *run(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *meter, *recs, *one, *table, *move_to_end, *dl, *keep = Py_None;
    Py_ssize_t ev_trim, ev_keep, ev_cap = PY_SSIZE_T_MAX;
    long long cutoff = 0;
    int cnew = 0;
    NewFlow nf;
    memset(&nf, 0, sizeof nf);
    PacketOut pko = {0, NULL, NULL, NULL, NULL};
    if (!PyArg_ParseTuple(args, "OOOOO!Onn|OLpn", &meter, &recs, &one, &dl, &PyDict_Type, &table,
                          &move_to_end, &ev_trim, &ev_keep, &keep, &cutoff, &cnew, &ev_cap))
        return NULL;
    if (ev_cap < 1 || ev_keep < 0 || ev_trim < ev_keep) {
        PyErr_SetString(PyExc_ValueError, "need ev_cap >= 1 and 0 <= ev_keep <= ev_trim");
        return NULL;
    }
    if (cnew && (!new_bound || rec_cls == NULL)) {
        PyErr_SetString(PyExc_RuntimeError, "bind_record() first: new flows in C need it");
        return NULL;
    }
    /* the records: a list of (ts, frame), or a raw batch (fastpath.RawBatch: pcap_records' index of where they
       are in the mapped file), read there: no time, frame and tuple object per packet */
    int raw = !PyList_Check(recs);
    Py_buffer rbuf, ribuf;   /* a raw batch's buffer and index, held until the end */
    Py_ssize_t n;
    if (raw) {
        PyObject *b = PyObject_GetAttrString(recs, "buf"), *x = b ? PyObject_GetAttrString(recs, "index") : NULL;
        int ok = x != NULL && PyObject_GetBuffer(b, &rbuf, PyBUF_SIMPLE) == 0;
        if (ok && PyObject_GetBuffer(x, &ribuf, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&rbuf);
            ok = 0;
        }
        Py_XDECREF(b);
        Py_XDECREF(x);
        if (!ok) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_TypeError, "run() takes a list of (ts, frame) records or a raw batch");
            }
            return NULL;
        }
        if (ribuf.len % RAW_ENTRY) {
            raw_release(raw, &rbuf, &ribuf);
            PyErr_SetString(PyExc_ValueError, "run(): a raw batch's index is not pcap_records'");
            return NULL;
        }
        n = ribuf.len / RAW_ENTRY;
    } else {
        n = PyList_GET_SIZE(recs);
    }
    PyObject *own_tso = NULL, *own_frame = NULL, *own_rec = NULL;   /* a raw record's objects, made as needed */
    if (cnew && nf_load(&nf, meter, table, move_to_end) < 0) {
        nf_clear(&nf);
        raw_release(raw, &rbuf, &ribuf);
        return NULL;
    }
    if ((keep != Py_None && (!PyByteArray_Check(keep) || PyByteArray_GET_SIZE(keep) != n)) || flow_type == NULL) {
        if (flow_type == NULL)
            PyErr_SetString(PyExc_RuntimeError, "bind() the Flow class first");
        else
            PyErr_SetString(PyExc_TypeError, "keep must be None or a bytearray of one byte per record");
        nf_clear(&nf);
        raw_release(raw, &rbuf, &ribuf);
        return NULL;
    }
    Py_ssize_t i = 0;
    PyObject *vlans = NULL;   /* the record's VLAN ids as a tuple, made when a flow event needs them */
    /* the key of the table's last entry, as this loop last put it there (a direction's packets often come
     * in a row: its move_to_end is then a no-op and skipped); forgotten whenever Python code may have run */
    PyObject *at_end = NULL, *at_hit = NULL;
    PyObject *at_prev = NULL, *at_prev_hit = NULL;   /* the key at_end held before, and its entry (see below) */
    Step step;
    memset(&step, 0, sizeof step);
    long long house_c;
    if (meter_ll(meter, "_house_c", &house_c) < 0 || load_state(meter, &step.prev, &step.prev_ts, &step.nh) < 0) {
        nf_clear(&nf);
        raw_release(raw, &rbuf, &ribuf);
        return NULL;
    }
    step_prev_from_obj(&step);
    step.house_c = house_c != 0;
    PyObject *m_tcp_close = PyObject_GetAttrString(meter, "_tcp_close");
    PyObject *closed_append = NULL;   /* meter._closed.append, when a TCP flow closes (tcp_close) */
    PyObject *m_periodic = PyObject_GetAttrString(meter, "_periodic");
    PyObject *m_sample = PyObject_GetAttrString(meter, "_sample");
    PyObject *m_dns = PyObject_GetAttrString(meter, "_dns");
    PyObject *m_housekeep = PyObject_GetAttrString(meter, "_housekeep");
    PyObject *m_new_flow = PyObject_GetAttrString(meter, "_new_flow");
    PyObject *m_end = PyObject_GetAttrString(meter, "_end");
    if (!m_tcp_close || !m_periodic || !m_sample || !m_dns || !m_housekeep || !m_new_flow || !m_end)
        goto error;
    long long smax_bytes = 0, smax_pkts = 0;
    int defer = -1;
    if (meter_ll(meter, "_smax_bytes", &smax_bytes) < 0 || meter_ll(meter, "_smax_pkts", &smax_pkts) < 0)
        goto error;
    {
        PyObject *dfo = PyObject_GetAttrString(meter, "defer_samples");
        defer = dfo ? PyObject_IsTrue(dfo) : -1;
        Py_XDECREF(dfo);
        if (defer < 0)
            goto error;
    }

    /* the record's frame as an object (made once for a raw record; NULL: no memory) */
#define FRAME() (frame != NULL ? frame : (frame = own_frame = PyBytes_FromStringAndSize((const char *)fr, flen)))
    for (; i < n; i++) {
        /* the record: rec, tso and frame borrowed from a list's tuple; a raw record's tso made here, its frame
         * (own_frame) only where an object is needed (FRAME()), rec only for Python (own_rec) */
        PyObject *rec = NULL, *tso = NULL, *frame = NULL;
        const unsigned char *fr = NULL;
        Py_ssize_t flen = 0;
        Py_CLEAR(own_tso);
        Py_CLEAR(own_frame);
        Py_CLEAR(own_rec);
        if (raw) {
            RawEntry re;
            memcpy(&re, (const char *)ribuf.buf + i * RAW_ENTRY, sizeof re);
            if (re.off < 0 || re.len < 0 || re.off > rbuf.len || re.len > rbuf.len - re.off) {
                PyErr_SetString(PyExc_ValueError, "run(): a raw record outside its buffer");
                goto error;
            }
            fr = (const unsigned char *)rbuf.buf + re.off;
            flen = (Py_ssize_t)re.len;
            if ((tso = own_tso = PyFloat_FromDouble(re.ts)) == NULL)
                goto error;
        } else {
            rec = PyList_GET_ITEM(recs, i);
            if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) < 2)
                goto python;
            tso = PyTuple_GET_ITEM(rec, 0);
            frame = PyTuple_GET_ITEM(rec, 1);
            if (!PyFloat_CheckExact(tso) || !PyBytes_CheckExact(frame))
                goto python;
            fr = (const unsigned char *)PyBytes_AS_STRING(frame);
            flen = PyBytes_GET_SIZE(frame);
        }
        /* a VXLAN or GRE frame whose inner packet the loop takes is metered twice, as _process_py does: 0 not
         * (yet) one; 1 its inner packet parsed; 2 again, the tunnel's own (outer) flow; 3 again, its inner packet */
        int vx = 0;
    again:
        Py_CLEAR(vlans);
        double ts = PyFloat_AS_DOUBLE(tso);
        Py_ssize_t len = flen;   /* where the parse stops (VXLAN: its packet's end) */
        /* the compiled path's frames: Ethernet II with up to 4 VLAN tags or a PPPoE session, IPv4 (fragments
         * too) or IPv6 (extension headers, not fragments), TCP, UDP, ICMP, ICMPv6 or a protocol without ports,
         * also in one GTP-U, IP-in-IP, VXLAN, GRE or ERSPAN tunnel; LLC and named non-IP frames counted; anything
         * else (and anything decode() would call malformed) goes to Python */
        if (len < 14)
            goto python;
        int plain = 0, ver = 4, proto, nvl = 0;
        long ipl, end, l4, pl, po, addr_off = 0, alen = 4;
        /* a GTP-U or IP-in-IP frame's inner packet is metered here as decode() decapsulates it (one tunnel
         * deep; GRE, VXLAN, TZSP, CAPWAP and nested tunnels go to Python): its tunnel (name NULL: none) */
        Tunnel tun = {NULL, NULL, NULL, NULL, 0, 0};
        long wire_end = 0;   /* a tunnelled frame's outermost IP packet's end (else off + ipl), for the cut */
        uint32_t flags = 0, seq = 0, ack = 0, sp = 0, dp = 0, et = be16(fr + 12), vids[4];
        uint32_t fragw = 0, ipid = 0;   /* an IPv4 fragment's offset and MF bits, and its datagram's id */
        int icmp = 0, noports = 0;
        unsigned long long vlan = 0;
        long off = 14;
        if (et == 0x0800 && len >= 42 && fr[14] == 0x45) {
            /* untagged IPv4 without options: exactly _fastpath.eth4's frames and results, else Python */
            ipl = (long)be16(fr + 16);
            addr_off = 26;
            if (ipl < 20)
                goto python;
            if (be16(fr + 20) & 0x3FFF)   /* a fragment: the general parse below (Python's when unbound) */
                goto inner;
            end = 14 + ipl;
            if (end > len)
                end = (long)len;
            proto = fr[23];
            if (proto == 6) {
                if (end < 54)
                    goto python;
                po = 34 + ((fr[46] >> 4) << 2);
                if (po < 54 || po > end)
                    goto python;
                pl = end - po;
            } else if (proto == 17) {
                po = 42;
                pl = end - 42;
            } else if (proto == 1 && s_icmp_name != NULL) {   /* ICMP: decode()'s (no ports, the header at po) */
                if (end - 34 < 4)
                    goto python;
                po = 34;
                pl = end - 34;
            } else if (proto == 4 || proto == 41) {   /* IP in IP: the inner packet at 34, as _l4 */
                wire_end = 14 + ipl;
                tun = (Tunnel){s_tun_ipip, s_tun_ipip_n, fr + 26, fr + 30, 4, 0};
                off = 34;
                et = proto == 4 ? 0x0800 : 0x86DD;
                goto inner;
            } else if (proto_names != NULL) {   /* IGMP, PIM, SCTP, ESP, ...: the general parse below */
                goto inner;
            } else {
                goto python;
            }
            plain = proto != 1;   /* ICMP's key has no ports: not the frame's slice */
            l4 = 34;
        } else {
            /* as decode(): _after_ethertype's VLAN tags, then _ip4_decode / _ip6_decode and _l4 */
        vtags:   /* VXLAN's inner Ethernet frame: its ethertype in et, its payload at off */
            while (et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200) {
                if (nvl == 4 || len - off < 4)
                    goto python;
                uint32_t vid = be16(fr + off) & 0x0FFF;
                vids[nvl++] = vid;
                vlan = vlan ? (vlan << 12) | vid : vid;
                et = be16(fr + off + 2);
                off += 4;
            }
        inner:   /* a tunnel's inner packet at off (et: 0x0800 or 0x86DD), the outer frame's VLANs kept */
            if (et == 0x0800) {
                if (len - off < 20 || (fr[off] >> 4) != 4)
                    goto python;
                ver = 4;
                alen = 4;
                long hl = (long)(fr[off] & 15) << 2, tot = (long)be16(fr + off + 2);
                if (hl < 20 || tot == 0 || tot < hl || len - off < hl)
                    goto python;
                fragw = be16(fr + off + 6) & 0x3FFF;
                if (fragw && (frag_max == 0 || tun.name != NULL))   /* a tunnel's inner fragment: Python */
                    goto python;
                ipid = be16(fr + off + 4);
                ipl = tot;
                proto = fr[off + 9];
                addr_off = off + 12;
                l4 = off + hl;
            } else if (et == 0x86DD) {
                if (len - off < 40 || (fr[off] >> 4) != 6)
                    goto python;
                long plen = (long)be16(fr + off + 4);
                if (plen == 0)
                    goto python;
                ver = 6;
                alen = 16;
                ipl = plen + 40;
                proto = fr[off + 6];
                addr_off = off + 8;
                l4 = off + 40;
            } else if (et == 0x0806 && tun.name == NULL && len - off >= 28
                       && memcmp(fr + off, "\x00\x01\x08\x00\x06\x04", 6) == 0) {
                /* a well-formed ARP packet (decode()'s KIND_ARP): its event written below (_non_ip's), where
                 * the sink takes packet events as their JSON */
                if (!pko.loaded && packet_out_load(&pko, meter) < 0)
                    goto error;
                if (pko.raw == NULL)
                    goto python;
                int aw = frame_step(&step, meter, m_housekeep, tso, frame, fr, flen, &at_end) < 0 ? -1
                    : arp_event(&pko, tso, fr, off, vids, nvl);
                if (aw == 0) {   /* a time this writer does not write: _non_ip */
                    Py_CLEAR(at_end);
                    aw = FRAME() == NULL ? -1 : arp_py(meter, tso, frame, off, vids, nvl);
                }
                if (aw < 0)
                    goto error;
                continue;
            } else if (l2_names != NULL && tun.name == NULL && et != 0x0806 && et != 0x8847 && et != 0x8848) {
                /* decode()'s other Ethernet payloads: a PPPoE session's IP packet is metered as any; LLC and
                 * the non-IP protocols decode() names are counted (KIND_L2), other ethertypes as unsupported */
                const char *name = NULL;   /* the counter: a literal here, or decode's name (nm) */
                PyObject *nm = NULL;
                int unsup = 0;
                if (et == 0x8864) {
                    if (len - off < 8)
                        goto python;
                    uint32_t ppp = be16(fr + off + 6);
                    if (ppp == 0x0021 || ppp == 0x0057) {
                        off += 8;
                        et = ppp == 0x0021 ? 0x0800 : 0x86DD;
                        goto inner;
                    }
                    name = "pppoe_control";
                } else if (et <= 1500) {   /* an IEEE 802.3 length: LLC */
                    if (len - off < 3)
                        goto python;
                    if (fr[off] == 0x42) {
                        name = "stp";
                    } else if (fr[off] == 0xAA && len - off >= 8) {   /* SNAP */
                        uint32_t pt = be16(fr + off + 6);
                        if (memcmp(fr + off + 3, "\x00\x00\x0c", 3) == 0)
                            name = pt == 0x2000 ? "cdp" : "cisco_l2";
                        else if (memcmp(fr + off + 3, "\x00\x00\x00", 3) == 0
                                 && (pt == 0x0800 || pt == 0x86DD || pt == 0x0806))
                            goto python;
                        else
                            name = "llc";
                    } else {
                        name = "llc";
                    }
                } else {
                    PyObject *k = PyLong_FromUnsignedLong(et);
                    nm = k ? PyDict_GetItemWithError(l2_names, k) : NULL;   /* borrowed */
                    Py_XDECREF(k);
                    if (nm == NULL && PyErr_Occurred())
                        goto error;
                    if (nm == NULL) {
                        name = "ethertype";   /* _UNSUP_ETHERTYPE */
                        unsup = 1;
                    }
                }
                if (frame_step(&step, meter, m_housekeep, tso, frame, fr, flen, &at_end) < 0)
                    goto error;
                if (unsup) {   /* unsupported_packets += 1 */
                    long long u;
                    if (meter_ll(meter, "unsupported_packets", &u) < 0)
                        goto error;
                    PyObject *uo = PyLong_FromLongLong(u + 1);
                    int ur = uo == NULL ? -1 : PyObject_SetAttr(meter, iname("unsupported_packets"), uo);
                    Py_XDECREF(uo);
                    if (ur < 0)
                        goto error;
                }
                if ((nm != NULL ? meter_count_o(meter, nm, 1) : meter_count(meter, name, 1)) < 0)
                    goto error;
                continue;
            } else {
                goto python;
            }
            end = off + ipl;
            if (end > len)
                end = (long)len;
            if (ver == 6 && proto_names != NULL) {   /* decode()'s walk over IPv6 extension headers */
                int hops = 0;
                while (proto == 0 || proto == 43 || proto == 60 || proto == 135 || proto == 139 || proto == 140
                       || proto == 253 || proto == 254 || proto == 51) {
                    if (end - l4 < 8)
                        goto python;
                    int nh = fr[l4];
                    l4 += proto == 51 ? ((long)fr[l4 + 1] + 2) << 2 : ((long)fr[l4 + 1] + 1) << 3;
                    proto = nh;
                    if (++hops > 16 || l4 > end)
                        goto python;
                }
                if (proto == 44)   /* an IPv6 fragment: Python */
                    goto python;
            }
            long avail = end - l4;
            if (fragw & 0x1FFF) {   /* a later fragment: no L4 header; its ports from its first fragment's */
                po = l4;
                pl = 0;
                goto fragment;
            }
            if (proto == 6) {
                if (avail < 20)
                    goto python;
                long thl = (long)(fr[l4 + 12] >> 4) << 2;
                po = l4 + thl;
                pl = end - po;
                if (thl < 20 || pl < 0)
                    goto python;
            } else if (proto == 17) {
                if (avail < 8)
                    goto python;
                po = l4 + 8;
                pl = end - po;
            } else if ((proto == 1 || proto == 58) && s_icmp_name != NULL) {
                if (avail < 4)
                    goto python;
                po = l4;
                pl = avail;
            } else if ((proto == 4 || proto == 41) && tun.name == NULL && !fragw) {   /* IP in IP, as _l4 */
                wire_end = off + ipl;
                tun = (Tunnel){s_tun_ipip, s_tun_ipip_n, fr + addr_off, fr + addr_off + alen, (int)alen, 0};
                off = l4;
                et = proto == 4 ? 0x0800 : 0x86DD;
                goto inner;
            } else if (proto == 47 && tun.name == NULL && !fragw && vx != 2 && proto_names != NULL) {
                /* GRE (_gre, version 0): an inner IP packet (the outer frame's VLANs and MACs kept), or an
                 * Ethernet frame (transparent bridging, ERSPAN II and III) bounded by the outer IP packet;
                 * PPTP's enhanced GRE, PPP, MPLS, anything else: Python */
                if (avail < 4 || (fr[l4 + 1] & 7) != 0)
                    goto python;
                unsigned int g0 = fr[l4];
                uint32_t pt = be16(fr + l4 + 2);
                long go = l4 + 4;
                unsigned long key = 0;
                if (g0 & 0xC0)
                    go += 4;
                if (g0 & 0x20) {   /* _gre_key */
                    if (end - go >= 4)
                        key = (unsigned long)be16(fr + go) << 16 | be16(fr + go + 2);
                    go += 4;
                }
                if (g0 & 0x10)
                    go += 4;
                if (go >= end)
                    goto python;
                wire_end = off + ipl;
                if (pt == 0x0800 || pt == 0x86DD) {
                    if ((fr[go] >> 4) != 4 && (fr[go] >> 4) != 6)
                        goto python;
                    tun = (Tunnel){s_tun_gre, s_tun_gre_n, fr + addr_off, fr + addr_off + alen, (int)alen, key, 0};
                    et = (fr[go] >> 4) == 4 ? 0x0800 : 0x86DD;
                    off = go;
                    if (vx == 0)
                        vx = 1;
                    goto inner;
                }
                long eo;   /* the inner Ethernet frame */
                if (pt == 0x6558)
                    eo = go;
                else if (pt == 0x88BE)   /* ERSPAN II (I: no header when S is clear) */
                    eo = (g0 & 0x10) ? go + 8 : go;
                else if (pt == 0x22EB && end - go >= 12)   /* ERSPAN III, its optional platform sub-header */
                    eo = go + 12 + ((fr[go + 11] & 1) ? 8 : 0);
                else
                    goto python;
                if (end - eo < 14)
                    goto python;
                tun = (Tunnel){pt == 0x6558 ? s_tun_gre : s_tun_erspan, pt == 0x6558 ? s_tun_gre_n : s_tun_erspan_n,
                               fr + addr_off, fr + addr_off + alen, (int)alen, key, eo};
                goto ether_in;
            } else if (proto_names != NULL && ((proto != 4 && proto != 41 && proto != 47) || fragw || vx == 2)
                       && (proto != 132 || avail >= 12) && proto != 1 && proto != 58) {
                /* a protocol without ports (IGMP, PIM, SCTP, ESP, OSPF, ...; a fragment of a tunnel's packet):
                 * keyed with ports 0, its payload at the header's end, as _l4 */
                po = l4;
                pl = avail;
            } else {
                goto python;
            }
        }
        icmp = proto == 1 || proto == 58;
        noports = proto != 6 && proto != 17;
        sp = noports ? 0 : be16(fr + l4);
        dp = noports ? 0 : be16(fr + l4 + 2);
        if (proto == 6) {
            seq = ((uint32_t)fr[l4 + 4] << 24) | ((uint32_t)fr[l4 + 5] << 16) | ((uint32_t)fr[l4 + 6] << 8) | fr[l4 + 7];
            ack = ((uint32_t)fr[l4 + 8] << 24) | ((uint32_t)fr[l4 + 9] << 16) | ((uint32_t)fr[l4 + 10] << 8) | fr[l4 + 11];
            flags = fr[l4 + 13];
        } else if (proto == 17 && !fragw && (is_tunnel_port(sp) || is_tunnel_port(dp))
                   && !(vx == 2 && sp != 2152 && dp != 2152 && (sp == 4789 || dp == 4789))) {
            /* (vx 2: a VXLAN packet's own flow, as UDP) */
            if (tun.name == NULL && sp != 2152 && dp != 2152 && (sp == 4789 || dp == 4789)) {
                /* VXLAN (_udp_tunnel's second test): its inner Ethernet frame, which ends with the outer IP
                 * packet; an inner frame that is not IP, or that the loop does not take: Python */
                if (end - po < 8 + 14 || !(fr[po] & 0x08))
                    goto python;
                wire_end = off + ipl;
                tun = (Tunnel){s_tun_vxlan, s_tun_vxlan_n, fr + addr_off, fr + addr_off + alen, (int)alen,
                               (unsigned long)be16(fr + po + 4) << 8 | fr[po + 6], po + 8};
                goto ether_in;
            }
            /* GTP-U (_udp_tunnel's first test): its G-PDU's inner IP packet; other tunnel ports, a GTP-U
             * message that is not a G-PDU (decode() meters it as UDP), a tunnel in a tunnel: Python */
            if (tun.name != NULL || (sp != 2152 && dp != 2152) || end - po < 8)
                goto python;
            unsigned int gf = fr[po];
            if ((gf >> 5) != 1 || fr[po + 1] != 0xFF)
                goto python;
            long io = po + 8;
            if (gf & 7) {
                if (end - io < 4)
                    goto python;
                unsigned int ext = (gf & 4) ? fr[io + 3] : 0;
                io += 4;
                int hops = 0;
                while (ext) {
                    if (end - io < 1)
                        goto python;
                    long ln = (long)fr[io] * 4;
                    if (ln == 0 || end - io < ln)
                        goto python;
                    ext = fr[io + ln - 1];
                    io += ln;
                    if (++hops > 8)
                        goto python;
                }
            }
            if (io >= end || ((fr[io] >> 4) != 4 && (fr[io] >> 4) != 6))
                goto python;
            wire_end = off + ipl;
            tun = (Tunnel){s_tun_gtp, s_tun_gtp_n, fr + addr_off, fr + addr_off + alen, (int)alen,
                           (unsigned long)be16(fr + po + 4) << 16 | be16(fr + po + 6)};
            off = io;
            et = (fr[io] >> 4) == 4 ? 0x0800 : 0x86DD;
            plain = 0;
            goto inner;
        }
    fragment:   /* a later fragment comes here with po, pl (0) and no ports yet */
        if (vx == 1) {   /* the loop takes this VXLAN packet's inner packet: first the packet's own flow */
            vx = 2;
            goto again;
        }
        /* a fast-path frame: from here on, everything in _process_py's order (_tunnel_flow's for vx 2) */
        if (vx != 3 && frame_step(&step, meter, m_housekeep, tso, frame, fr, flen, &at_end) < 0)
            goto error;
        if (fragw) {   /* _process_py's fragment cache: (src, dst, id, proto) -> the first fragment's ports */
            int fr2 = frag_cache(meter, fragw, fr + addr_off, (int)alen, ipid, proto, &sp, &dp);
            if (fr2 < 0)
                goto error;
            if (fr2 == 0)   /* an orphan: counted, not metered */
                continue;
        }
        /* the directional key: proto + src + dst + sport + dport [+ b"/<vlan>"], as _process_py's; built here,
         * then the same bytes as at_end (this direction's previous packet, nothing changed the table since):
         * the entry found then, without a new key object, its hash and the lookup */
        unsigned char kb[1 + 32 + 4 + 32];
        Py_ssize_t kl;
        if (plain) {
            kb[0] = (unsigned char)proto;
            memcpy(kb + 1, fr + 26, 12);
            kl = 13;
        } else {
            char suffix[32];
            int sl = vlan ? snprintf(suffix, sizeof suffix, "/%llu", vlan) : 0;
            kb[0] = (unsigned char)proto;
            memcpy(kb + 1, fr + addr_off, (size_t)(2 * alen));
            unsigned char *kp = kb + 1 + 2 * alen;   /* the ports (0 without), as _pp */
            kp[0] = (unsigned char)(sp >> 8);
            kp[1] = (unsigned char)sp;
            kp[2] = (unsigned char)(dp >> 8);
            kp[3] = (unsigned char)dp;
            if (sl)
                memcpy(kp + 4, suffix, (size_t)sl);
            kl = 1 + 2 * alen + 4 + sl;
        }
        PyObject *key, *hit;
        if (at_end == NULL)
            Py_CLEAR(at_prev);   /* the table may have changed since (at_end was forgotten): at_prev too */
        if (at_end != NULL && at_hit != NULL && PyBytes_GET_SIZE(at_end) == kl
            && memcmp(PyBytes_AS_STRING(at_end), kb, (size_t)kl) == 0) {
            key = ref(at_end);
            hit = at_hit;
        } else if (at_prev != NULL && at_prev_hit != NULL && PyBytes_GET_SIZE(at_prev) == kl
                   && memcmp(PyBytes_AS_STRING(at_prev), kb, (size_t)kl) == 0) {
            key = ref(at_prev);   /* the key before at_end (often the other direction): its hash is cached */
            hit = at_prev_hit;
        } else {
            key = PyBytes_FromStringAndSize((const char *)kb, kl);
            if (key == NULL)
                goto error;
            hit = PyDict_GetItemWithError(table, key);   /* borrowed */
        }
        PyObject *f = NULL;
        int fwd = 1;
        if (hit == NULL && PyErr_Occurred()) {
            Py_DECREF(key);
            goto error;
        }
        if (hit != NULL) {
            if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2
                || !PyObject_TypeCheck(PyTuple_GET_ITEM(hit, 0), flow_type)) {
                Py_DECREF(key);
                PyErr_SetString(PyExc_TypeError, "the flow table holds something else than (Flow, bool)");
                goto error;
            }
            f = PyTuple_GET_ITEM(hit, 0);
            fwd = PyTuple_GET_ITEM(hit, 1) == Py_True;
            Py_INCREF(f);
            if (at_end == NULL || PyBytes_GET_SIZE(at_end) != PyBytes_GET_SIZE(key)
                || memcmp(PyBytes_AS_STRING(at_end), PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key)) != 0) {
                PyObject *r = PyObject_CallOneArg(move_to_end, key);
                if (r == NULL) {
                    Py_DECREF(key);
                    Py_DECREF(f);
                    goto error;
                }
                Py_DECREF(r);
                /* key is the table's last entry now, the former last one (at_end) the one before it: at_prev */
                PyObject *old_end = at_end, *old_hit = at_hit;
                at_end = ref(key);
                at_hit = ref(hit);   /* the entry of at_end, while at_end is set */
                Py_XSETREF(at_prev, old_end);
                Py_XSETREF(at_prev_hit, old_hit);
            }
            PyObject *st = get(f, STATE);
            int state = st ? PyObject_IsTrue(st) : -1;
            if (state < 0) {
                Py_DECREF(key);
                Py_DECREF(f);
                goto error;
            }
            if (state && proto == 6 && (flags & 0x12) == 0x02) {
                /* a new connection on the key of a closed one: end it, then a new flow */
                PyObject *why = PyObject_GetAttrString(f, "end_reason");
                int has = why ? PyObject_IsTrue(why) : -1;
                PyObject *r2 = has < 0 ? NULL : PyObject_CallFunction(m_end, "OO", f, has ? why : s_fin);
                Py_CLEAR(at_end);
                Py_XDECREF(why);
                Py_DECREF(f);
                f = NULL;
                if (r2 == NULL) {
                    Py_DECREF(key);
                    goto error;
                }
                Py_DECREF(r2);
            }
        }
        if (f == NULL && cnew) {   /* a new flow, made here as _new_flow makes it */
            if ((!plain && vlans == NULL && (vlans = make_vlans(vids, nvl)) == NULL) || FRAME() == NULL) {
                Py_DECREF(key);
                goto error;
            }
            f = new_flow(&nf, meter, key, tso, frame, ver, proto, (int)alen, sp, dp, flags, plain ? empty_tuple : vlans,
                         icmp && pl >= 2 ? (int)fr[po] << 8 | fr[po + 1] : -1, &tun, &fwd);
            Py_CLEAR(at_end);
            if (f == NULL) {
                Py_DECREF(key);
                goto error;
            }
        }
        if (f == NULL) {   /* a new flow (plain: src/dst None, _new_flow slices them, as for eth4's frames) */
            PyObject *res;
            if (FRAME() == NULL) {
                Py_DECREF(key);
                goto error;
            }
            if (plain) {
                res = PyObject_CallFunction(m_new_flow, "OOOiiOOkkkiOisll", key, tso, frame, 4, proto, Py_None, Py_None,
                                            (unsigned long)sp, (unsigned long)dp, (unsigned long)flags, 0, empty_tuple,
                                            0, "", po, pl);
            } else {
                vlans = make_vlans(vids, nvl);
                res = vlans == NULL ? NULL
                    : PyObject_CallFunction(m_new_flow, "OOOiiy#y#kkkKOisll", key, tso, frame, ver, proto,
                                            (const char *)fr + addr_off, (Py_ssize_t)alen,
                                            (const char *)fr + addr_off + alen, (Py_ssize_t)alen, (unsigned long)sp,
                                            (unsigned long)dp, (unsigned long)flags, vlan, vlans, 0,
                                            tun.name ? PyUnicode_AsUTF8(tun.name) : "", po, pl);
            }
            Py_CLEAR(at_end);
            if (res == NULL || !PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2) {
                Py_XDECREF(res);
                Py_DECREF(key);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "_new_flow() did not return (flow, is_forward)");
                goto error;
            }
            f = PyTuple_GET_ITEM(res, 0);
            fwd = PyTuple_GET_ITEM(res, 1) == Py_True;
            Py_INCREF(f);
            Py_DECREF(res);
        }
        Py_DECREF(key);
        PyObject *st = get(f, STATE), *nc = get(f, NEXT_CHECK), *sm, *dns;
        int state = st ? PyObject_IsTrue(st) : -1;
        double next_check = nc ? PyFloat_AsDouble(nc) : -1.0;
        long smv;
        int is_dns;
        if (state < 0 || (next_check == -1.0 && PyErr_Occurred())) {
            Py_DECREF(f);
            goto error;
        }
        int bad = 0;
        if (fwd) {
            bad |= add_int(f, S_PKTS, 1) | add_int(f, S_BYTES, ipl);
            Py_INCREF(tso);
            put(f, S_STAMP, tso);
            if (flags)
                bad |= or_int(f, S_FLAGS, (long)flags);
        } else {
            bad |= add_int(f, D_PKTS, 1) | add_int(f, D_BYTES, ipl);
            Py_INCREF(tso);
            put(f, D_STAMP, tso);
            if (flags)
                bad |= or_int(f, D_FLAGS, (long)flags);
        }
        Py_INCREF(tso);
        put(f, LAST, tso);
        if (keep != Py_None && cutoff > 0 && !bad && vx != 2) {   /* the recorder's keep mark (record_cutoff) */
            PyObject *rb = get(f, REC_BYTES);
            long long x = rb ? PyLong_AsLongLong(rb) : -1;
            if (x == -1 && PyErr_Occurred())
                bad = -1;
            else if (x >= cutoff)
                PyByteArray_AS_STRING(keep)[i] = 0;
            else
                bad |= add_int(f, REC_BYTES, (long long)flen);
        }
        PyObject *ev = SLOT(f, EV);
        if (!bad && ev != NULL && ev != Py_None)
            bad |= ring_push(f, ev, ts, fr, flen, ev_trim, ev_keep, ev_cap);
        if (bad) {
            Py_DECREF(f);
            goto error;
        }
        /* the flow's events, in _process_py's order, by the meter's own methods */
        PyObject *fwd_o = fwd ? Py_True : Py_False, *r3;
        if ((flags & 5) && proto == 6 && !state) {   /* FIN/RST: TCP close */
            if (new_bound) {                         /* as _tcp_close does it, without its Python frame */
                if (tcp_close(meter, f, tso, flags, fwd, &closed_append) < 0) {
                    Py_DECREF(f);
                    goto error;
                }
            } else {
                r3 = PyObject_CallFunction(m_tcp_close, "OOkO", f, tso, (unsigned long)flags, fwd_o);
                Py_CLEAR(at_end);
                if (r3 == NULL) {
                    Py_DECREF(f);
                    goto error;
                }
                Py_DECREF(r3);
            }
        }
        if (ts >= next_check) {                      /* update record / active timeout */
            r3 = PyObject_CallFunctionObjArgs(m_periodic, f, tso, NULL);
            Py_CLEAR(at_end);
            if (r3 == NULL) {
                Py_DECREF(f);
                goto error;
            }
            Py_DECREF(r3);
        }
        if (pl || (flags & 3)) {                     /* sampling (read again: the flow may have ended) */
            sm = get(f, SAMPLING);
            smv = sm ? PyLong_AsLong(sm) : -1;
            if (smv == -1 && PyErr_Occurred()) {
                Py_DECREF(f);
                goto error;
            }
            if (smv & (fwd ? 1 : 2)) {
                if (vlans == NULL && (vlans = make_vlans(vids, nvl)) == NULL) {
                    Py_DECREF(f);
                    goto error;
                }
                /* the common cases here (in-order TCP, UDP, SYN/FIN, a direction done), the rest in _sample */
                /* the segment's payload on the wire: more than the frame holds when the capture cut it */
                /* (_wire_payload: what the capture cut off the outermost IP packet, when the payload
                 * reaches the frame's end; without a tunnel a packet past the frame always reaches it) */
                long we = tun.name == NULL ? off + ipl : wire_end;
                long wpl = po + pl == (long)flen && we > (long)flen ? pl + (we - (long)flen) : pl;
                int done = defer ? sample(meter, f, tso, fr, po, pl, wpl, fwd, proto, flags, seq, ack, vlans,
                                          smax_bytes, smax_pkts) : 0;
                Py_CLEAR(at_end);   /* it may call the meter's methods */
                if (done < 0) {
                    Py_DECREF(f);
                    goto error;
                }
                if (!done) {
                    Py_CLEAR(at_end);
                    r3 = FRAME() == NULL ? NULL : PyObject_CallFunction(m_sample, "OOOOllkkkOl", f, tso, frame, fwd_o, po, pl,
                                               (unsigned long)flags, (unsigned long)seq, (unsigned long)ack, vlans,
                                               wpl);
                    if (r3 == NULL) {
                        Py_DECREF(f);
                        goto error;
                    }
                    Py_DECREF(r3);
                }
            }
        }
        if (pl && vx != 2) {                         /* a DNS message (not in a VXLAN packet's own flow) */
            dns = get(f, IS_DNS);
            is_dns = dns ? PyObject_IsTrue(dns) : -1;
            if (is_dns < 0) {
                Py_DECREF(f);
                goto error;
            }
            if (is_dns) {
                if (vlans == NULL && (vlans = make_vlans(vids, nvl)) == NULL) {
                    Py_DECREF(f);
                    goto error;
                }
                int dw = pko.loaded || packet_out_load(&pko, meter) == 0
                    ? dns_event(&pko, f, tso, fr, po, pl, proto, fwd, vlans) : -1;
                if (dw < 0) {
                    Py_DECREF(f);
                    goto error;
                }
                if (dw == 0) {
                    Py_CLEAR(at_end);
                    r3 = FRAME() == NULL ? NULL
                        : PyObject_CallFunction(m_dns, "OOOOlliO", f, tso, frame, fwd_o, po, pl, proto, vlans);
                    if (r3 == NULL) {
                        Py_DECREF(f);
                        goto error;
                    }
                    Py_DECREF(r3);
                }
            }
        }
        Py_DECREF(f);
        if (vx == 2) {   /* the tunnel's own flow metered: now its inner packet */
            vx = 3;
            goto again;
        }
        continue;
    ether_in:
        /* a VXLAN, GRE or ERSPAN packet's inner Ethernet frame at tun.mac (its VLAN tags its own), which ends
         * with the outer IP packet (decode's frame[:end]); its packet is parsed as any frame's from there */
        if (vx == 0)
            vx = 1;
        len = end;
        et = be16(fr + tun.mac + 12);
        off = tun.mac + 14;
        nvl = 0;
        vlan = 0;
        plain = 0;
        goto vtags;
    python:
        /* this record needs Python: FlowMeter._process_py((rec,), dl) with the meter's state in step */
        if (step_prev_obj(&step) < 0 || store_state(meter, step.prev, step.prev_ts, &step.now, &step.now_set) < 0)
            goto error;
        if (rec == NULL && (FRAME() == NULL || (rec = own_rec = PyTuple_Pack(2, tso, frame)) == NULL))
            goto error;
        {
            PyObject *one_rec = PyTuple_Pack(1, rec);
            if (one_rec == NULL)
                goto error;
            PyObject *ki = PyLong_FromSsize_t(i);
            Py_CLEAR(at_end);
            PyObject *r2 = ki == NULL ? NULL : PyObject_CallFunctionObjArgs(one, one_rec, dl, keep, ki, NULL);
            Py_XDECREF(ki);
            Py_DECREF(one_rec);
            if (r2 == NULL)
                goto error;
            Py_DECREF(r2);
        }
        if (load_state(meter, &step.prev, &step.prev_ts, &step.nh) < 0)
            goto error;
        step_prev_from_obj(&step);
    }
    if (step_prev_obj(&step) < 0 || store_state(meter, step.prev, step.prev_ts, &step.now, &step.now_set) < 0)
        goto error;
    Py_DECREF(step.prev);
    house_clear(&step.house);
    Py_DECREF(m_tcp_close);
    Py_XDECREF(closed_append);
    Py_DECREF(m_periodic);
    Py_DECREF(m_sample);
    Py_DECREF(m_dns);
    Py_DECREF(m_housekeep);
    Py_DECREF(m_new_flow);
    Py_DECREF(m_end);
    Py_XDECREF(vlans);
    Py_XDECREF(at_end);
    Py_XDECREF(at_hit);
    Py_XDECREF(at_prev);
    Py_XDECREF(at_prev_hit);
    nf_clear(&nf);
    packet_out_clear(&pko);
    Py_XDECREF(own_tso);
    Py_XDECREF(own_frame);
    Py_XDECREF(own_rec);
    raw_release(raw, &rbuf, &ribuf);
    return Py_BuildValue("(LLL)", step.npk, step.nbytes_all, step.dups);
#undef FRAME
error:
    nf_clear(&nf);
    packet_out_clear(&pko);
    Py_XDECREF(own_tso);
    Py_XDECREF(own_frame);
    Py_XDECREF(own_rec);
    raw_release(raw, &rbuf, &ribuf);
    Py_XDECREF(step.prev);
    house_clear(&step.house);
    Py_XDECREF(m_tcp_close);
    Py_XDECREF(closed_append);
    Py_XDECREF(m_periodic);
    Py_XDECREF(m_sample);
    Py_XDECREF(m_dns);
    Py_XDECREF(m_housekeep);
    Py_XDECREF(m_new_flow);
    Py_XDECREF(m_end);
    Py_XDECREF(vlans);
    Py_XDECREF(at_end);
    Py_XDECREF(at_hit);
    Py_XDECREF(at_prev);
    Py_XDECREF(at_prev_hit);
    return NULL;
}

/*
 * Base64 as pydantic writes bytes in JSON (ser_json_bytes="base64": the URL-safe alphabet, padded), for
 * shared.models.batch_json's samples (b64_json below; see set_b64_json there)
 */
static const char b64_alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* two output characters per 12 input bits (built at import): half the table lookups of one per 6 bits */
static uint16_t b64_pairs[4096];

static void b64_init(void) {
    for (int v = 0; v < 4096; v++) {
        unsigned char pair[2] = {(unsigned char)b64_alpha[v >> 6], (unsigned char)b64_alpha[v & 63]};
        memcpy(&b64_pairs[v], pair, 2);
    }
}

/* ``n`` bytes at ``in`` as padded base64 text at ``o`` ((n + 2) / 3 * 4 bytes); returns the end */
static unsigned char *b64_encode(const unsigned char *in, Py_ssize_t n, unsigned char *o) {
    Py_ssize_t i = 0;
#if !PY_BIG_ENDIAN
    /* six bytes at a time while eight can be read: one load, four pair lookups, one store (the pairs'
     * bytes are in memory order, so on a little-endian machine the first pair goes in the low bits) */
    for (; i + 8 <= n; i += 6) {
        uint64_t v, w;
        memcpy(&v, in + i, 8);
        v = __builtin_bswap64(v);   /* the first byte in the top bits */
        w = (uint64_t)b64_pairs[(v >> 52) & 4095] | (uint64_t)b64_pairs[(v >> 40) & 4095] << 16
            | (uint64_t)b64_pairs[(v >> 28) & 4095] << 32 | (uint64_t)b64_pairs[(v >> 16) & 4095] << 48;
        memcpy(o, &w, 8);
        o += 8;
    }
#endif
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        memcpy(o, &b64_pairs[v >> 12], 2);
        memcpy(o + 2, &b64_pairs[v & 4095], 2);
        o += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = (unsigned char)b64_alpha[v >> 18];
        *o++ = (unsigned char)b64_alpha[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
        *o++ = (unsigned char)b64_alpha[v >> 18];
        *o++ = (unsigned char)b64_alpha[(v >> 12) & 63];
        *o++ = (unsigned char)b64_alpha[(v >> 6) & 63];
        *o++ = '=';
    }
    return o;
}

/*
 * b64_json(list of bytes) -> bytes: the list as the JSON array of its base64 texts, ``["..","..."]``
 * (pydantic's URL-safe padded base64, no spaces), for an orjson.Fragment in batch_json's samples:
 * orjson then copies the array instead of making and scanning one str per payload.
 */
static PyObject *b64_json(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "b64_json() needs a list of bytes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(arg), size = 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(arg, i);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "b64_json() needs a list of bytes");
            return NULL;
        }
        Py_ssize_t k = PyBytes_GET_SIZE(b);
        if (k > (PY_SSIZE_T_MAX / 4) * 3 - 3 || size > PY_SSIZE_T_MAX - 3 - (k + 2) / 3 * 4) {
            PyErr_NoMemory();
            return NULL;
        }
        size += (k + 2) / 3 * 4 + 2 + (i > 0);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    *o++ = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(arg, i);
        if (i > 0)
            *o++ = ',';
        *o++ = '"';
        o = b64_encode((const unsigned char *)PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), o);
        *o++ = '"';
    }
    *o++ = ']';
    return out;
}

/* v == dv for two objects of the same type, as PyObject_RichCompareBool, with the defaults' types (str,
 * float, int) compared here: that generic call cost lean most of its time (36 fields per flow record) */
static inline int same_value(PyObject *v, PyObject *dv) {
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type) {
        if (PyUnicode_GET_LENGTH(v) != PyUnicode_GET_LENGTH(dv) || PyUnicode_KIND(v) != PyUnicode_KIND(dv))
            return 0;
        return memcmp(PyUnicode_DATA(v), PyUnicode_DATA(dv),
                      (size_t)PyUnicode_GET_LENGTH(v) * PyUnicode_KIND(v)) == 0;
    }
    if (t == &PyFloat_Type)
        return PyFloat_AS_DOUBLE(v) == PyFloat_AS_DOUBLE(dv);
    if (t == &PyLong_Type) {
        int o1 = 0, o2 = 0;
        long long a = PyLong_AsLongLongAndOverflow(v, &o1), b = PyLong_AsLongLongAndOverflow(dv, &o2);
        if (!o1 && !o2)
            return a == b;
        PyErr_Clear();
    }
    return PyObject_RichCompareBool(v, dv, Py_EQ);
}

/* the position of name object k among a model's n names: i where a __dict__ keeps step with them, else
 * found by a scan (out of step: a field the builder appends last); n when k is not one of those objects */
static inline Py_ssize_t name_pos(PyObject *names, Py_ssize_t n, Py_ssize_t i, PyObject *k) {
    if (i < n && PyTuple_GET_ITEM(names, i) == k)
        return i;
    for (i = 0; i < n && PyTuple_GET_ITEM(names, i) != k; i++)
        ;
    return i;
}

/* lean's rule: 1 when v is at its field's default dv (same type and equal; NULL: no default), else 0; -1 */
static inline int at_default(PyObject *v, PyObject *dv) {
    if (dv == NULL || Py_TYPE(dv) != Py_TYPE(v))
        return 0;
    return dv == v ? 1 : same_value(v, dv);
}

/*
 * lean(dict, spec) -> dict: a copy of the event's __dict__ without the entries whose value equals
 * (same type, ==) the field's default (shared.models.batch_json writes events without their
 * default-valued fields: schema 1.3).  spec = (names, defaults, by_name) from shared.models._defaults:
 * the model's field names and their defaults in field order (``keep``, any object not a default, for
 * event_type and required fields) and the same as a dict.  The __dict__ of a record built in C has
 * its fields in (nearly) that order with the same name objects, so each field's default is found by
 * position, or by a scan of the names when out of step; a key that is not one of those objects is
 * looked up in by_name (a key found nowhere is kept).  A value of another type
 * than its default (0 where 0.0, False where 0) is kept.
 */
static PyObject *lean(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *d, *spec, *names, *defaults, *by_name;
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 3) {
        PyErr_SetString(PyExc_TypeError, "lean() needs a dict and a (names, defaults, by_name) tuple");
        return NULL;
    }
    d = args[0];
    spec = args[1];
    names = PyTuple_GET_ITEM(spec, 0);
    defaults = PyTuple_GET_ITEM(spec, 1);
    by_name = PyTuple_GET_ITEM(spec, 2);
    if (!PyTuple_Check(names) || !PyTuple_Check(defaults) || !PyDict_Check(by_name)
            || PyTuple_GET_SIZE(defaults) != PyTuple_GET_SIZE(names)) {
        PyErr_SetString(PyExc_TypeError, "lean(): bad (names, defaults, by_name)");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    PyObject *out = _PyDict_NewPresized(PyDict_GET_SIZE(d));
    if (out == NULL)
        return NULL;
    PyObject *k, *v;
    Py_ssize_t pos = 0, i = 0;
    while (PyDict_Next(d, &pos, &k, &v)) {
        PyObject *dv = NULL;
        i = name_pos(names, n, i, k);
        if (i < n) {
            dv = PyTuple_GET_ITEM(defaults, i);
            i++;
        } else {
            dv = PyDict_GetItemWithError(by_name, k);   /* another name object than the model's */
            if (dv == NULL && PyErr_Occurred())
                goto fail;
        }
        int at = at_default(v, dv);
        if (at < 0)
            goto fail;
        if (at)
            continue;
        if (PyDict_SetItem(out, k, v) < 0)
            goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/*
 * flat_batch(events, specs, other, float_json) -> bytes | None
 *   shared.models.batch_json's document for a batch of flat events (flow records, a verdict among them),
 *   written here in one pass: b'{"event_type":"batch","events":[' + each event + b']}'.  An event whose type
 *   is a key of specs (its (names, defaults, by_name) as for lean) is written from its __dict__ without its
 *   default-valued fields, byte for byte as orjson.dumps(lean(e.__dict__, spec)) writes it (orjson's string
 *   escapes; a float as its repr, or float_json(x) for one in exponent notation); any other event as
 *   other(e) (bytes).  None (no exception) when an event holds what orjson would refuse or this writer does
 *   not write (a value of another type, an int beyond 64 bits, a lone surrogate): the caller then takes
 *   its general path, which decides.
 */
typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static int buf_grow(Buf *b, size_t more) {
    if (b->n + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const char *s, size_t n) {
    if (buf_grow(b, n) < 0)
        return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* The buffer documents are written in (records, samples, packet events, batches), kept between calls: one
 * document costs no allocation, a batch no doubling of its buffer as it grows.  One writer has it at a time;
 * a writer that finds it taken (a nested call, another thread while Python code ran) writes into its own. */
static Buf scratch_buf = {NULL, 0, 0};
static int scratch_taken = 0;

static inline Buf *buf_take(Buf *own) {
    if (scratch_taken) {
        own->p = NULL;
        own->n = own->cap = 0;
        return own;
    }
    scratch_taken = 1;
    scratch_buf.n = 0;
    return &scratch_buf;
}

static inline void buf_release(Buf *b) {
    if (b != &scratch_buf) {
        PyMem_Free(b->p);
        return;
    }
    scratch_taken = 0;
    if (b->cap > ((size_t)1 << 22)) {   /* an unusually big batch's: not kept */
        PyMem_Free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

/* a str as orjson writes it; 1: written, 0: cannot (a lone surrogate), -1: error */
static unsigned char json_esc[256];   /* 1: a byte orjson escapes (control characters, '"', '\\') */

static int json_str(Buf *b, PyObject *s) {
    Py_ssize_t n;
    const char *u;
    if (PyUnicode_IS_COMPACT_ASCII(s)) {   /* most: nothing to escape, one copy */
        n = PyUnicode_GET_LENGTH(s);
        u = (const char *)PyUnicode_DATA(s);
        Py_ssize_t i = 0;
        /* eight bytes at a time while none is a control character, '"' or '\\' (ASCII: every byte < 0x80) */
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        for (; i + 8 <= n; i += 8) {
            uint64_t x;
            memcpy(&x, u + i, 8);
            uint64_t q = x ^ (ones * '"'), bs = x ^ (ones * '\\');
            if (((x - ones * 0x20) | (q - ones) | (bs - ones)) & highs)
                break;   /* one of the eight may be one (or the test is unsure): byte by byte from here */
        }
        while (i < n && !json_esc[(unsigned char)u[i]])
            i++;
        if (i == n) {
            if (buf_grow(b, (size_t)n + 2) < 0)
                return -1;
            char *o = b->p + b->n;
            o[0] = '"';
            memcpy(o + 1, u, (size_t)n);
            o[n + 1] = '"';
            b->n += (size_t)n + 2;
            return 1;
        }
    } else {
        u = PyUnicode_AsUTF8AndSize(s, &n);
    }
    if (u == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    if (buf_grow(b, (size_t)n * 6 + 2) < 0)
        return -1;
    static const char hex[] = "0123456789abcdef";
    char *o = b->p + b->n;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)u[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->n = (size_t)(o - b->p);
    return 1;
}

/* the decimal digits of x, right-aligned to end (returns the first digit) */
static inline char *utoa_end(unsigned long long x, char *end) {
    do {
        *--end = (char)('0' + x % 10);
        x /= 10;
    } while (x);
    return end;
}

/* one scalar value; 1: written, 0: cannot, -1: error */
static int json_value(Buf *b, PyObject *v, PyObject *float_json) {
    PyTypeObject *t = Py_TYPE(v);
    char tmp[32];
    if (t == &PyUnicode_Type)
        return json_str(b, v);
    if (v == Py_None)
        return buf_put(b, "null", 4) < 0 ? -1 : 1;
    if (v == Py_True)
        return buf_put(b, "true", 4) < 0 ? -1 : 1;
    if (v == Py_False)
        return buf_put(b, "false", 5) < 0 ? -1 : 1;
    if (t == &PyLong_Type) {
        int over = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &over);
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (over > 0) {
            unsigned long long ux = PyLong_AsUnsignedLongLong(v);
            if (ux == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            char *d = utoa_end(ux, tmp + sizeof tmp);
            return buf_put(b, d, (size_t)(tmp + sizeof tmp - d)) < 0 ? -1 : 1;
        }
        if (over < 0)
            return 0;
        char *d = utoa_end(x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x, tmp + sizeof tmp);
        if (x < 0)
            *--d = '-';
        return buf_put(b, d, (size_t)(tmp + sizeof tmp - d)) < 0 ? -1 : 1;
    }
    if (t == &PyFloat_Type) {
        double x = PyFloat_AS_DOUBLE(v), ax = fabs(x);
        if (ax >= 1e-4 && ax < 4294967296.0) {
            /* a whole number of microseconds (packet times, most durations): k / 1e6 is the double nearest
             * to k millionths, as strtod of their text is, so that text is the shortest that gives x back
             * (doubles below 2^32 are closer than 1e-6 apart) and orjson writes it so: trailing zeros
             * trimmed, one digit kept after the point */
            long long k = llround(x * 1e6);
            if ((double)k / 1e6 == x) {
                unsigned long long ak = (unsigned long long)(k < 0 ? -k : k), frac = ak % 1000000ULL;
                int w = 6;
                while (w > 1 && frac % 10 == 0) {
                    frac /= 10;
                    w--;
                }
                char *end = tmp + sizeof tmp, *d = end;
                for (int j = 0; j < w; j++) {   /* the fraction's w digits, leading zeros kept */
                    *--d = (char)('0' + frac % 10);
                    frac /= 10;
                }
                *--d = '.';
                d = utoa_end(ak / 1000000ULL, d);
                if (k < 0)
                    *--d = '-';
                return buf_put(b, d, (size_t)(end - d)) < 0 ? -1 : 1;
            }
        }
        if (x == 0.0)
            return buf_put(b, signbit(x) ? "-0.0" : "0.0", signbit(x) ? 4 : 3) < 0 ? -1 : 1;
        if (ax >= 1e-4 && ax < 1e15) {
            /* the rest of the usual range (durations in milliseconds, rates): Python's repr, the shortest text
             * that reads back as x, in plain notation here, is orjson's text for these too (a test compares
             * them over millions of values); the call to orjson cost ~700 instructions per end record */
            char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
            if (s == NULL)
                return -1;
            int rc = buf_put(b, s, strlen(s)) < 0 ? -1 : 1;
            PyMem_Free(s);
            return rc;
        }
        if (float_json == NULL)
            return 0;
        PyObject *j = PyObject_CallOneArg(float_json, v);   /* orjson's own text (NaN, infinities: null) */
        if (j == NULL)
            return -1;
        int rc = PyBytes_Check(j) ? (buf_put(b, PyBytes_AS_STRING(j), (size_t)PyBytes_GET_SIZE(j)) < 0 ? -1 : 1) : 0;
        Py_DECREF(j);
        return rc;
    }
    return 0;
}

/* the JSON of a model's field names as keys (b'"name":'), made once per names tuple (a few models) */
static struct {
    PyObject *names;   /* a strong reference: the tuple outlives its entry */
    char *text;        /* every key's text, one after the other */
    Py_ssize_t *at;    /* key i is text[at[i]:at[i + 1]] */
} key_texts[8];

static int key_text_of(PyObject *names) {
    int slot = -1;
    for (int j = 0; j < 8; j++) {
        if (key_texts[j].names == names)
            return j;
        if (slot < 0 && key_texts[j].names == NULL)
            slot = j;
    }
    if (slot < 0)
        return -1;   /* more models than this keeps: keys written one by one */
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    Buf b = {NULL, 0, 0};
    Py_ssize_t *at = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    if (at == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        at[i] = (Py_ssize_t)b.n;
        PyObject *k = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_CheckExact(k) || json_str(&b, k) != 1 || buf_put(&b, ":", 1) < 0) {
            PyErr_Clear();
            PyMem_Free(b.p);
            PyMem_Free(at);
            return -1;
        }
    }
    at[n] = (Py_ssize_t)b.n;
    Py_INCREF(names);
    key_texts[slot].names = names;
    key_texts[slot].text = b.p;
    key_texts[slot].at = at;
    return slot;
}

/* key k and its colon: the text key_text_of made for position ki of entry kt, or written (ki or kt < 0);
 * 1, 0 (cannot) or -1 */
static inline int json_key(Buf *b, int kt, Py_ssize_t ki, PyObject *k) {
    if (kt >= 0 && ki >= 0) {
        const Py_ssize_t *at = key_texts[kt].at;
        return buf_put(b, key_texts[kt].text + at[ki], (size_t)(at[ki + 1] - at[ki])) < 0 ? -1 : 1;
    }
    int r = json_str(b, k);
    return r <= 0 ? r : (buf_put(b, ":", 1) < 0 ? -1 : 1);
}

/* one flat event's object without its default-valued fields (lean's rule); 1, 0 or -1 as above */
static int json_lean(Buf *b, PyObject *d, PyObject *spec, PyObject *float_json) {
    PyObject *names = PyTuple_GET_ITEM(spec, 0), *defaults = PyTuple_GET_ITEM(spec, 1),
             *by_name = PyTuple_GET_ITEM(spec, 2);
    Py_ssize_t n = PyTuple_GET_SIZE(names), pos = 0, i = 0;
    PyObject *k, *v;
    int first = 1, kt = key_text_of(names);
    if (buf_put(b, "{", 1) < 0)
        return -1;
    while (PyDict_Next(d, &pos, &k, &v)) {
        PyObject *dv = NULL;
        i = name_pos(names, n, i, k);
        Py_ssize_t ki = -1;   /* the key's position among the names, when it is that name object */
        if (i < n) {
            dv = PyTuple_GET_ITEM(defaults, i);
            ki = i++;
        } else {
            dv = PyDict_GetItemWithError(by_name, k);
            if (dv == NULL && PyErr_Occurred())
                return -1;
        }
        int at = at_default(v, dv);
        if (at < 0)
            return -1;
        if (at)
            continue;
        if (!PyUnicode_CheckExact(k))
            return 0;
        if (!first && buf_put(b, ",", 1) < 0)
            return -1;
        first = 0;
        int r = json_key(b, kt, ki, k);
        if (r <= 0 || (r = json_value(b, v, float_json)) <= 0)
            return r;
    }
    return buf_put(b, "}", 1) < 0 ? -1 : 1;
}

/* one event of a batch, written by flat_batch's or b64_batch's rule: 1, 0 (cannot: decline) or -1 */
typedef int (*event_writer)(Buf *b, PyObject *e, PyObject *spec, PyObject *float_json);

static int flat_one(Buf *b, PyObject *e, PyObject *spec, PyObject *float_json) {
    PyObject *d = PyObject_GenericGetDict(e, NULL);
    if (d == NULL)
        return -1;
    int r = -1;
    if (!PyDict_Check(d) || !PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 3
        || !PyTuple_Check(PyTuple_GET_ITEM(spec, 0)) || !PyTuple_Check(PyTuple_GET_ITEM(spec, 1))
        || !PyDict_Check(PyTuple_GET_ITEM(spec, 2))
        || PyTuple_GET_SIZE(PyTuple_GET_ITEM(spec, 0)) != PyTuple_GET_SIZE(PyTuple_GET_ITEM(spec, 1)))
        PyErr_SetString(PyExc_TypeError, "flat_batch(): an event without a __dict__, or a bad spec");
    else
        r = json_lean(b, d, spec, float_json);
    Py_DECREF(d);
    return r;
}

/* batch_json's document: b'{"event_type":"batch","events":[' + each event + b']}'.  An item that is bytes
 * goes in as it is (an event's JSON written already); an event whose type is a key of specs by one(); any
 * other as other(e) (bytes).  None when one() declines an event. */
static PyObject *write_batch(PyObject *args, const char *name, event_writer one) {
    PyObject *events, *specs, *other, *float_json;
    if (!PyArg_ParseTuple(args, "O!O!OO", &PyList_Type, &events, &PyDict_Type, &specs, &other, &float_json))
        return NULL;
    static const char head[] = "{\"event_type\":\"batch\",\"events\":[";
    Buf own, *b = buf_take(&own);
    if (buf_put(b, head, sizeof head - 1) < 0) {
        buf_release(b);
        return NULL;
    }
    Py_ssize_t ne = PyList_GET_SIZE(events);
    for (Py_ssize_t i = 0; i < ne; i++) {
        PyObject *e = PyList_GET_ITEM(events, i);
        if (i && buf_put(b, ",", 1) < 0)
            goto error;
        if (PyBytes_CheckExact(e)) {   /* a record the meter wrote itself (record_json) */
            if (buf_put(b, PyBytes_AS_STRING(e), (size_t)PyBytes_GET_SIZE(e)) < 0)
                goto error;
            continue;
        }
        PyObject *spec = PyDict_GetItemWithError(specs, (PyObject *)Py_TYPE(e));
        if (spec == NULL && PyErr_Occurred())
            goto error;
        if (spec != NULL) {
            int r = one(b, e, spec, float_json);
            if (r < 0)
                goto error;
            if (r == 0) {
                buf_release(b);
                Py_RETURN_NONE;
            }
        } else {
            PyObject *j = PyObject_CallOneArg(other, e);
            if (j == NULL)
                goto error;
            int r = PyBytes_Check(j) ? buf_put(b, PyBytes_AS_STRING(j), (size_t)PyBytes_GET_SIZE(j)) : -2;
            Py_DECREF(j);
            if (r == -2)
                PyErr_Format(PyExc_TypeError, "%s(): other() did not return bytes", name);
            if (r < 0)
                goto error;
        }
    }
    if (buf_put(b, "]}", 2) < 0)
        goto error;
    PyObject *out = PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->n);
    buf_release(b);
    return out;
error:
    buf_release(b);
    return NULL;
}

static PyObject *flat_batch(PyObject *self, PyObject *args) {
    (void)self;
    return write_batch(args, "flat_batch", flat_one);
}

/*
 * b64_batch(events, specs, other, float_json) -> bytes | None
 *   batch_json's document for a batch of samples (shared.models._B64_MODELS' path), written in one pass: an
 *   event whose type is a key of specs ((list-of-bytes field names, names of the model's fields)) and that
 *   has no unknown fields is written from its whole __dict__ (not lean, as _b64_doc), each list of bytes as
 *   the JSON array of its base64 texts (b64_json's), a list of ints as such; any other event as other(e)
 *   (bytes).  None (no exception) where an event holds anything else: the caller's path decides.
 */
static int json_b64_list(Buf *b, PyObject *v) {
    Py_ssize_t n = PyList_GET_SIZE(v), size = 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = PyList_GET_ITEM(v, i);
        if (!PyBytes_Check(x))
            return 0;
        size += (PyBytes_GET_SIZE(x) + 2) / 3 * 4 + 3;
    }
    if (buf_grow(b, (size_t)size) < 0)
        return -1;
    unsigned char *o = (unsigned char *)b->p + b->n;
    *o++ = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = PyList_GET_ITEM(v, i);
        if (i > 0)
            *o++ = ',';
        *o++ = '"';
        o = b64_encode((const unsigned char *)PyBytes_AS_STRING(x), PyBytes_GET_SIZE(x), o);
        *o++ = '"';
    }
    *o++ = ']';
    b->n = (size_t)((char *)o - b->p);
    return 1;
}

static int json_scalar_list(Buf *b, PyObject *v, PyObject *float_json) {
    if (buf_put(b, "[", 1) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(v); i++) {
        PyObject *x = PyList_GET_ITEM(v, i);
        if (PyList_Check(x) || PyDict_Check(x))
            return 0;
        if (i > 0 && buf_put(b, ",", 1) < 0)
            return -1;
        int r = json_value(b, x, float_json);
        if (r <= 0)
            return r;
    }
    return buf_put(b, "]", 1) < 0 ? -1 : 1;
}

/* sink.raw_packets (where packet events may go as their JSON), the meter's probe, source and counters: loaded at
 * the first DNS message or ARP packet of a run() (constant during it); raw stays NULL where the sink has no such
 * list */
static int packet_out_load(PacketOut *o, PyObject *meter) {
    o->loaded = 1;
    if (!new_bound)
        return 0;
    PyObject *sink = PyObject_GetAttrString(meter, "sink");
    if (sink == NULL)
        return -1;
    o->raw = sink_raw(sink, "raw_packets");
    Py_DECREF(sink);
    if (o->raw == NULL)
        return 0;
    o->probe = PyObject_GetAttrString(meter, "probe");
    o->source = o->probe ? PyObject_GetAttrString(meter, "source") : NULL;
    o->counters = o->source ? PyObject_GetAttrString(meter, "counters") : NULL;
    if (o->counters == NULL) {
        packet_out_clear(o);
        return -1;
    }
    if (!PyUnicode_CheckExact(o->probe) || !PyUnicode_CheckExact(o->source) || !PyDict_CheckExact(o->counters))
        Py_CLEAR(o->raw);   /* not what this writer writes: FlowMeter._dns and _non_ip do it */
    Buf b = {NULL, 0, 0};
    int w = o->raw ? json_str(&b, o->probe) : 1;
    if (w == 1 && o->raw)
        w = json_str(&b, o->source);
    PyMem_Free(b.p);
    if (w < 0) {
        packet_out_clear(o);
        return -1;
    }
    if (w == 0)
        Py_CLEAR(o->raw);   /* a lone surrogate: orjson refuses it, and batch_json then writes through pydantic */
    return 0;
}

static void packet_out_clear(PacketOut *o) {
    Py_CLEAR(o->raw);
    Py_CLEAR(o->probe);
    Py_CLEAR(o->source);
    Py_CLEAR(o->counters);
    o->loaded = 0;
}

/* a value among the event's fields: 1 written, 0 cannot (FlowMeter._dns writes the event), -1 error */
static int pk_field(Buf *b, const char *key, PyObject *v) {
    if (v == NULL)
        return 0;
    if (buf_put(b, key, strlen(key)) < 0)
        return -1;
    return json_value(b, v, rec_float_json);
}

/*
 * FlowMeter._dns in C for a sink with raw_packets: the DNS message (UDP payload, or one whole message in a TCP
 * segment after its length prefix) as the PacketEvent's JSON, byte for byte what batch_json writes for the
 * event _dns builds (orjson over its fields in _dns's order, the payload as pydantic's base64).  1 done,
 * 0 for _dns to do (no raw list, a message it skips or counts, a value this writer does not write), -1 error.
 */
static int dns_event(PacketOut *o, PyObject *f, PyObject *tso, const unsigned char *fr, long po, long pl, int proto,
                     int fwd, PyObject *vlans) {
    if (o->raw == NULL)
        return 0;
    const unsigned char *p = fr + po;
    long n = pl;
    if (proto == 6) {
        if (n < 14)
            return 0;
        long ln = ((long)p[0] << 8) | p[1];
        if (ln + 2 > n || ln < 12)
            return 0;
        p += 2;
        n = ln;
    } else if (n < 12) {
        return 0;
    }
    PyObject *vl = RSLOT(f, R_VLAN_IDS);
    if (vl == NULL || !PyTuple_CheckExact(vlans) || !(PyTuple_CheckExact(vl) || PyList_CheckExact(vl)))
        return 0;
    PyObject *vlan_id = PySequence_Size(vl) > 0 ? PySequence_Fast_GET_ITEM(vl, 0) : zero_int;
    Buf own, *b = buf_take(&own);
    int w = 1;
#define PK(key, v) if (w == 1) w = pk_field(b, key, v)
    if (buf_put(b, "{", 1) < 0)
        w = -1;
    PK("\"timestamp\":", tso);   /* json_value with rec_float_json: 0 for a float it has no text for */
    PK(",\"probe\":", o->probe);
    PK(",\"flow_id\":", RSLOT(f, R_FLOW_ID));
    if (w == 1 && buf_put(b, ",\"event_type\":\"packet\"", sizeof ",\"event_type\":\"packet\"" - 1) < 0)
        w = -1;
    PK(",\"transport\":", RSLOT(f, R_TRANSPORT));
    PK(",\"src_ip\":", RSLOT(f, R_SRC_IP));
    PK(",\"src_port\":", RSLOT(f, R_SPORT));
    PK(",\"dst_ip\":", RSLOT(f, R_DST_IP));
    PK(",\"dst_port\":", RSLOT(f, R_DPORT));
    PK(",\"vlan_id\":", vlan_id);
    static const char mid[] = ",\"icmp_type\":null,\"icmp_code\":null,\"kind\":\"dns\"";
    if (w == 1 && buf_put(b, mid, sizeof mid - 1) < 0)
        w = -1;
    PK(",\"source\":", o->source);
    PK(",\"src_mac\":", RSLOT(f, R_SRC_MAC));
    PK(",\"dst_mac\":", RSLOT(f, R_DST_MAC));
    if (w == 1 && buf_put(b, ",\"vlan_ids\":[", sizeof ",\"vlan_ids\":[" - 1) < 0)
        w = -1;
    for (Py_ssize_t i = 0; w == 1 && i < PyTuple_GET_SIZE(vlans); i++) {
        PyObject *x = PyTuple_GET_ITEM(vlans, i);
        if (!PyLong_CheckExact(x))
            w = 0;
        else if (i > 0 && buf_put(b, ",", 1) < 0)
            w = -1;
        else
            w = json_value(b, x, NULL);
    }
#undef PK
    if (w == 1) {
        static const char tail_t[] = "\",\"arp\":null,\"from_src\":true}", tail_f[] = "\",\"arp\":null,\"from_src\":false}";
        size_t tl = fwd ? sizeof tail_t - 1 : sizeof tail_f - 1;
        if (buf_put(b, "],\"payload\":\"", sizeof "],\"payload\":\"" - 1) < 0 || buf_grow(b, (size_t)(n + 2) / 3 * 4 + tl) < 0) {
            w = -1;
        } else {
            unsigned char *e = b64_encode(p, n, (unsigned char *)b->p + b->n);
            b->n = (size_t)((char *)e - b->p);
            memcpy(b->p + b->n, fwd ? tail_t : tail_f, tl);
            b->n += tl;
        }
    }
    if (w == 1) {
        PyObject *doc = PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->n);
        w = doc == NULL || PyList_Append(o->raw, doc) < 0 ? -1 : 1;
        Py_XDECREF(doc);
    }
    buf_release(b);
    return w;
}

static inline int bput(Buf *b, const char *s) {
    return buf_put(b, s, strlen(s));
}

/*
 * FlowMeter._non_ip for a well-formed ARP packet at off (o->raw set): counts arp_packets and appends the
 * PacketEvent's JSON, byte for byte what batch_json writes for the event _non_ip builds.  0 or -1 (error).
 */
static int arp_event(PacketOut *o, PyObject *tso, const unsigned char *fr, long off, const uint32_t *vids, int nvl) {
    const unsigned char *a = fr + off;
    char sip[16], tip[16], smac[18], tmac[18], fsrc[18], fdst[18], num[32];
    snprintf(sip, sizeof sip, "%u.%u.%u.%u", a[14], a[15], a[16], a[17]);
    snprintf(tip, sizeof tip, "%u.%u.%u.%u", a[24], a[25], a[26], a[27]);
    *mac_text(smac, a + 8) = 0;
    *mac_text(tmac, a + 18) = 0;
    *mac_text(fdst, fr) = 0;
    *mac_text(fsrc, fr + 6) = 0;
    Buf own, *b = buf_take(&own);
    int w = bput(b, "{\"timestamp\":") < 0 ? -1 : json_value(b, tso, rec_float_json);
    if (w == 1)
        w = bput(b, ",\"probe\":") < 0 ? -1 : json_str(b, o->probe);
    if (w == 1) {
        int k = snprintf(num, sizeof num, "%u", nvl ? vids[0] : 0);
        if (bput(b, ",\"flow_id\":\"\",\"event_type\":\"packet\",\"transport\":\"ARP\",\"src_ip\":\"") < 0
            || bput(b, sip) < 0 || bput(b, "\",\"src_port\":0,\"dst_ip\":\"") < 0 || bput(b, tip) < 0
            || bput(b, "\",\"dst_port\":0,\"vlan_id\":") < 0 || buf_put(b, num, (size_t)k) < 0
            || bput(b, ",\"icmp_type\":null,\"icmp_code\":null,\"kind\":\"arp\",\"source\":") < 0)
            w = -1;
    }
    if (w == 1)
        w = json_str(b, o->source);
    if (w == 1) {
        if (bput(b, ",\"src_mac\":\"") < 0 || bput(b, fsrc) < 0 || bput(b, "\",\"dst_mac\":\"") < 0
            || bput(b, fdst) < 0 || bput(b, "\",\"vlan_ids\":[") < 0)
            w = -1;
        for (int k = 0; w == 1 && k < nvl; k++) {
            int m = snprintf(num, sizeof num, k ? ",%u" : "%u", vids[k]);
            if (buf_put(b, num, (size_t)m) < 0)
                w = -1;
        }
        int m = snprintf(num, sizeof num, "%u", ((unsigned)a[6] << 8) | a[7]);
        if (w == 1 && (bput(b, "],\"payload\":\"\",\"arp\":{\"operation\":") < 0 || buf_put(b, num, (size_t)m) < 0
                       || bput(b, ",\"sender_mac\":\"") < 0 || bput(b, smac) < 0
                       || bput(b, "\",\"sender_ip\":\"") < 0 || bput(b, sip) < 0
                       || bput(b, "\",\"target_mac\":\"") < 0 || bput(b, tmac) < 0
                       || bput(b, "\",\"target_ip\":\"") < 0 || bput(b, tip) < 0
                       || bput(b, "\"},\"from_src\":true}") < 0))
            w = -1;
    }
    if (w == 1) {   /* _count("arp_packets"), then the event */
        PyObject *k = iname("arp_packets"), *doc = NULL;
        w = k == NULL || dict_count(o->counters, k, 1) < 0
            || (doc = PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->n)) == NULL || PyList_Append(o->raw, doc) < 0 ? -1 : 1;
        Py_XDECREF(doc);
    }
    buf_release(b);
    return w;
}

/* FlowMeter._non_ip(ts, frame, decode()'s KIND_ARP result) for the ARP packet at off; 0 or -1 */
static int arp_py(PyObject *meter, PyObject *tso, PyObject *frame, long off, const uint32_t *vids, int nvl) {
    PyObject *vl = make_vlans(vids, nvl), *r = vl ? Py_BuildValue("(ilOOi)", 1, off, zero_int, vl, 0) : NULL;
    PyObject *x = r ? PyObject_CallMethod(meter, "_non_ip", "OOO", tso, frame, r) : NULL;
    Py_XDECREF(vl);
    Py_XDECREF(r);
    Py_XDECREF(x);
    return x ? 0 : -1;
}

static int json_b64_event(Buf *b, PyObject *e, PyObject *spec, PyObject *float_json) {
    PyObject *lists = PyTuple_GET_ITEM(spec, 0), *names = PyTuple_GET_ITEM(spec, 1);
    PyObject *extra = off_extra >= 0 ? MSLOT(e, off_extra) : NULL;
    if (extra != NULL && extra != Py_None && (!PyDict_Check(extra) || PyDict_GET_SIZE(extra) > 0))
        return 0;   /* unknown fields: pydantic writes it */
    PyObject *d = PyObject_GenericGetDict(e, NULL);
    if (d == NULL)
        return -1;
    int kt = key_text_of(names), first = 1, r = 1;
    Py_ssize_t n = PyTuple_GET_SIZE(names), pos = 0, i = 0;
    PyObject *k, *v;
    if (!PyDict_Check(d) || buf_put(b, "{", 1) < 0) {
        r = PyDict_Check(d) ? -1 : 0;
        goto done;
    }
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k)) {
            r = 0;
            goto done;
        }
        if (!first && buf_put(b, ",", 1) < 0) {
            r = -1;
            goto done;
        }
        first = 0;
        i = name_pos(names, n, i, k);
        if ((r = json_key(b, kt, i < n ? i : -1, k)) <= 0)
            goto done;
        if (i < n)
            i++;
        if (PyList_CheckExact(v)) {
            int is_b64 = 0;
            for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(lists); j++) {
                PyObject *lk = PyTuple_GET_ITEM(lists, j);
                if (lk == k || (PyUnicode_Check(lk) && PyUnicode_Compare(lk, k) == 0)) {
                    is_b64 = 1;
                    break;
                }
            }
            r = is_b64 && PyList_GET_SIZE(v) > 0 ? json_b64_list(b, v) : json_scalar_list(b, v, float_json);
        } else {
            r = json_value(b, v, float_json);
        }
        if (r <= 0)
            goto done;
    }
    r = buf_put(b, "}", 1) < 0 ? -1 : 1;
done:
    Py_DECREF(d);
    return r;
}

static int b64_one(Buf *b, PyObject *e, PyObject *spec, PyObject *float_json) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2 || !PyTuple_Check(PyTuple_GET_ITEM(spec, 0))
        || !PyTuple_Check(PyTuple_GET_ITEM(spec, 1))) {
        PyErr_SetString(PyExc_TypeError, "b64_batch(): a spec is not (list fields, names)");
        return -1;
    }
    return json_b64_event(b, e, spec, float_json);
}

static PyObject *b64_batch(PyObject *self, PyObject *args) {
    (void)self;
    return write_batch(args, "b64_batch", b64_one);
}

/*
 * bind_flat(spec, float_json) -> None: FlowRecord's (names, defaults, by_name) as shared.models._defaults gives
 * it, for the end records the idle loop writes as JSON itself (record_json): each key's default and its text;
 * float_json writes a float the way orjson does (flat_batch's argument)
 */
static PyObject *rec_spec = NULL, *rec_dflt[NKEYS];
static int rec_kt = -1;   /* the record's keys' texts: key_text_of's entry for them, in K_ order */

static PyObject *rec_float_json = NULL;

static PyObject *bind_flat(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec, *float_json;
    if (!PyArg_ParseTuple(args, "OO", &spec, &float_json))
        return NULL;
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 3 || !PyTuple_Check(PyTuple_GET_ITEM(spec, 0))
        || !PyTuple_Check(PyTuple_GET_ITEM(spec, 1))
        || PyTuple_GET_SIZE(PyTuple_GET_ITEM(spec, 0)) != PyTuple_GET_SIZE(PyTuple_GET_ITEM(spec, 1))) {
        PyErr_SetString(PyExc_TypeError, "bind_flat() needs FlowRecord's (names, defaults, by_name)");
        return NULL;
    }
    if (rec_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_record() first");
        return NULL;
    }
    PyObject *names = PyTuple_GET_ITEM(spec, 0), *defaults = PyTuple_GET_ITEM(spec, 1);
    PyObject *dflt[NKEYS], *keys = PyTuple_New(NKEYS);
    if (keys == NULL)
        return NULL;
    for (int k = 0; k < NKEYS; k++) {
        dflt[k] = NULL;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(names); j++) {
            int eq = PyUnicode_Check(PyTuple_GET_ITEM(names, j))
                ? PyUnicode_Compare(PyTuple_GET_ITEM(names, j), rec_keys[k]) == 0 : 0;
            if (eq) {
                dflt[k] = PyTuple_GET_ITEM(defaults, j);
                break;
            }
        }
        PyTuple_SET_ITEM(keys, k, ref(rec_keys[k]));
    }
    int kt = key_text_of(keys);   /* the entry keeps the tuple */
    Py_DECREF(keys);
    if (kt < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "bind_flat(): no room for the record's keys' texts");
        return NULL;
    }
    rec_kt = kt;
    Py_INCREF(spec);
    Py_XSETREF(rec_spec, spec);   /* keeps the defaults alive */
    Py_INCREF(float_json);
    Py_XSETREF(rec_float_json, float_json);
    memcpy(rec_dflt, dflt, sizeof dflt);
    Py_RETURN_NONE;
}

/* a flow record's JSON from its values (record_values), as flat_batch writes the FlowRecord record_of
 * makes of them: 1 written, 0 cannot (the caller makes the record), -1 error */
static int record_json(Buf *b, PyObject *vals[NKEYS]) {
    int first = 1;
    if (buf_put(b, "{", 1) < 0)
        return -1;
    for (int k = 0; k < NKEYS; k++) {
        PyObject *v = vals[k], *dv = rec_dflt[k];
        int at = at_default(v, dv);
        if (at < 0)
            return -1;
        if (at)
            continue;
        if (!first && buf_put(b, ",", 1) < 0)
            return -1;
        first = 0;
        int r = json_key(b, rec_kt, k, rec_keys[k]);
        if (r <= 0 || (r = json_value(b, v, rec_float_json)) <= 0)
            return r;
    }
    return buf_put(b, "}", 1) < 0 ? -1 : 1;
}

/* sink.<name> (raw_records, raw_live): a list that takes records as their JSON (bytes) where no one in this
 * process reads the record objects (capture's Outbox without a recorder or inline detectors); else NULL */
static PyObject *sink_raw(PyObject *sink, const char *name) {
    if (rec_spec == NULL)
        return NULL;
    PyObject *raw = mattr(sink, name);
    if (raw == NULL)
        PyErr_Clear();
    else if (!PyList_CheckExact(raw))
        Py_CLEAR(raw);
    return raw;
}

/* a flow record to the sink: its JSON appended to raw (a list) where there is one and JSON can hold it, and the
 * flow to idx where there is one (sink.raw_index, the packet recorder's: the flow for a start, None and the flow
 * for an end); else the FlowRecord through sink_flow */
static int emit_record(PyObject *raw, PyObject *idx, PyObject *sink_flow, PyObject *f, PyObject *phase, PyObject *ts,
                       PyObject *probe,
                       PyObject *app, PyObject *application, PyObject *category, PyObject *host, PyObject *conf) {
    if (raw != NULL) {
        PyObject *vals[NKEYS];
        if (record_values(f, phase, ts, probe, app, application, category, host, conf, vals) < 0)
            return -1;
        Buf own, *b = buf_take(&own);
        int w = record_json(b, vals);
        values_clear(vals);
        if (w > 0) {
            PyObject *j = PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->n);
            w = j == NULL ? -1 : PyList_Append(raw, j);
            Py_XDECREF(j);
            /* the packet recorder's index: the flow itself (a start), or None then the flow (an end) */
            if (w == 0 && idx != NULL && (phase == s_end || PyUnicode_CompareWithASCIIString(phase, "end") == 0))
                w = PyList_Append(idx, Py_None);
            if (w == 0 && idx != NULL)
                w = PyList_Append(idx, f);
            if (w == 0)
                w = 1;
        }
        buf_release(b);
        if (w != 0)
            return w < 0 ? -1 : 0;
    }
    PyObject *rec = record_of(f, phase, ts, probe, app, application, category, host, conf);
    if (rec == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(sink_flow, rec);
    Py_DECREF(rec);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/*
 * expire(meter, now[, why]) -> flows ended
 *   FlowMeter._housekeep's two loops in C.  First the TCP flows closed by FIN/RST (meter._closed) whose grace
 *   period is over at now, ended with their reason.  Then, from the front of the table (oldest direction
 *   stamps first), each entry stamped at or before now - idle_timeout whose flow saw no packet since then:
 *   taken out of the table (_remove) and ended with why ("idle"; finish() passes now=inf and its reason):
 *   _end and _publish_end, the end record through sink.flow (or its JSON into sink.raw_records), the verdict
 *   beside it through sink.flow_verdict.  An entry whose flow is alive through its other direction is
 *   re-stamped and moved back, as there.  A coalesced sample still to send goes first, through _emit_sample.
 *   A flow that waits for verdicts (or is closing already) goes to the meter's own _end.  The loops and the
 *   pure-Python _housekeep give the same records in the same order (tests/services/capture/test_meter_twin.py).
 */
/* record_out(raw, to, f, phase, ts, probe, app, application, category, host, confidence[, index]): FlowMeter._out's
 * record, its JSON appended to raw (a list) where JSON can hold it (and bind_flat was called), and then the flow
 * to index (a list, the packet recorder's: the flow for a start, None and the flow for an end); else the
 * FlowRecord to to(record) */
static PyObject *record_out(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *raw, *to, *f, *phase, *ts, *probe, *app, *application, *category, *host, *conf, *idx = Py_None;
    if (!PyArg_ParseTuple(args, "O!OOOOOOOOOO|O", &PyList_Type, &raw, &to, &f, &phase, &ts, &probe, &app, &application,
                          &category, &host, &conf, &idx))
        return NULL;
    if (idx != Py_None && !PyList_CheckExact(idx)) {
        PyErr_SetString(PyExc_TypeError, "record_out(): the index must be a list or None");
        return NULL;
    }
    if (!new_bound || rec_cls == NULL || !PyObject_TypeCheck(f, flow_type)) {
        PyErr_SetString(PyExc_TypeError, "record_out() needs bind_record() and a Flow");
        return NULL;
    }
    if (emit_record(rec_spec != NULL ? raw : NULL, idx == Py_None ? NULL : idx, to, f, phase, ts, probe, app,
                    application, category, host, conf) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int nslot_ll(PyObject *f, int k, long long *out);

/* ---- samples: FlowMeter._emit_sample and flush_samples in C.  Where the sink has raw_samples (capture's
 * outbox: nothing in capture reads a sample but its JSON), a sample goes there as its JSON, written from
 * its values as b64_batch writes the FlowSample made of them; else the FlowSample through sink.sample ---- */
typedef struct {
    PyObject *probe, *by_id, *raw, *sink_sample;
    Counters *ctr;
} Emitter;

static void emitter_clear(Emitter *x) {
    Py_CLEAR(x->probe);
    Py_CLEAR(x->by_id);
    Py_CLEAR(x->raw);
    Py_CLEAR(x->sink_sample);
    Py_CLEAR(x->ctr);
}

static int emitter_load(Emitter *x, PyObject *meter) {
    memset(x, 0, sizeof *x);
    PyObject *sink = mattr(meter, "sink");
    if (sink == NULL)
        return -1;
    x->raw = sink_raw(sink, "raw_samples");
    x->sink_sample = mattr(sink, "sample");
    Py_DECREF(sink);
    if (x->sink_sample == NULL || (x->probe = mattr(meter, "probe")) == NULL
        || (x->by_id = mattr(meter, "_by_id")) == NULL || (x->ctr = meter_counters(meter)) == NULL) {
        emitter_clear(x);
        return -1;
    }
    if (!PyDict_Check(x->by_id)) {
        emitter_clear(x);
        PyErr_SetString(PyExc_TypeError, "the meter's _by_id is not a dict");
        return -1;
    }
    return 0;
}

static int sample_kt = -1;   /* the sample's keys' texts (key_text_of), in Q_ order */

/* a sample's JSON from its values, as json_b64_event writes the FlowSample sample_object makes of them:
 * 1 written, 0 cannot (the caller makes the sample), -1 error */
static int sample_json(Buf *b, PyObject *vals[NQKEYS]) {
    if (sample_kt < 0) {
        PyObject *keys = PyTuple_New(NQKEYS);
        if (keys == NULL)
            return -1;
        for (int k = 0; k < NQKEYS; k++)
            PyTuple_SET_ITEM(keys, k, ref(sample_keys[k]));
        sample_kt = key_text_of(keys);   /* the entry keeps the tuple */
        Py_DECREF(keys);
        if (sample_kt < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "no room for the sample's keys' texts");
            return -1;
        }
    }
    if (buf_put(b, "{", 1) < 0)
        return -1;
    for (int k = 0; k < NQKEYS; k++) {
        PyObject *v = vals[k];
        int r = (k && buf_put(b, ",", 1) < 0) ? -1 : json_key(b, sample_kt, k, sample_keys[k]);
        if (r <= 0)
            return r;
        if (PyList_CheckExact(v))
            r = (k == Q_SRC_PAYLOADS || k == Q_DST_PAYLOADS) && PyList_GET_SIZE(v) > 0 ? json_b64_list(b, v)
                : json_scalar_list(b, v, rec_float_json);
        else
            r = json_value(b, v, rec_float_json);
        if (r <= 0)
            return r;
    }
    return buf_put(b, "}", 1) < 0 ? -1 : 1;
}

/* FlowMeter._emit_sample(f, ts, fwd, vlans, final) */
static int emit_sample_one(Emitter *x, PyObject *f, PyObject *ts, PyObject *fwd, PyObject *vlans, PyObject *final) {
    PyObject *dirs = SLOT(f, DIRS), *fid = SLOT(f, FLOW_ID), *vals[NQKEYS], *out = NULL;
    if (dirs == NULL || fid == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Flow.dirs/flow_id is not set");
        return -1;
    }
    if (dirs == Py_None)   /* sampling was stopped meanwhile (final verdict, end) */
        return 0;
    int fin = PyObject_IsTrue(final);
    if (fin < 0 || sample_values(f, ts, fwd, vlans, final, x->probe, vals) < 0)
        return -1;
    if (x->raw != NULL) {
        Buf own, *b = buf_take(&own);
        int w = sample_json(b, vals);
        if (w > 0)
            out = PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->n);
        buf_release(b);
        if (w < 0 || (w > 0 && out == NULL)) {
            sample_values_clear(vals);
            return -1;
        }
    }
    if (out == NULL && (out = sample_object(vals)) == NULL) {
        sample_values_clear(vals);
        return -1;
    }
    sample_values_clear(vals);
    long long seq, pending;
    if (nslot_ll(f, N_SAMPLE_SEQ, &seq) < 0 || nslot_ll(f, N_PENDING, &pending) < 0
        || nput(f, N_SAMPLE_SEQ, PyLong_FromLongLong(seq + 1)) < 0 || nput(f, N_PENDING, PyLong_FromLongLong(pending + 1)) < 0
        || PyDict_SetItem(x->by_id, fid, f) < 0) {
        Py_DECREF(out);
        return -1;
    }
    x->ctr->pending++;
    x->ctr->samples_sent++;
    if (fin) {
        put(f, SAMPLING, ref(zero_int));
        put(f, SD, ref(Py_None));
        put(f, DD, ref(Py_None));
        put(f, DIRS, ref(Py_None));
    }
    int r;
    if (PyBytes_CheckExact(out)) {
        r = PyList_Append(x->raw, out);
    } else {
        PyObject *rr = PyObject_CallOneArg(x->sink_sample, out);
        r = rr == NULL ? -1 : 0;
        Py_XDECREF(rr);
    }
    Py_DECREF(out);
    return r;
}

/* emit_sample(meter, f, ts, fwd, vlans, final): FlowMeter._emit_sample */
static PyObject *emit_sample(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *meter, *f, *ts, *fwd, *vlans, *final;
    if (!PyArg_ParseTuple(args, "OOOOOO", &meter, &f, &ts, &fwd, &vlans, &final))
        return NULL;
    if (!PyObject_TypeCheck(f, flow_type)) {
        PyErr_SetString(PyExc_TypeError, "emit_sample() needs a Flow");
        return NULL;
    }
    Emitter x;
    if (emitter_load(&x, meter) < 0)
        return NULL;
    int r = emit_sample_one(&x, f, ts, fwd, vlans, final);
    emitter_clear(&x);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* flush_samples(meter): FlowMeter.flush_samples (deferred mode): one sample per flow of meter._dirty, which
 * is replaced by a new dict first; returns how many there were */
static PyObject *flush_samples(PyObject *self, PyObject *meter) {
    (void)self;
    PyObject *dirty = PyObject_GetAttr(meter, s_dirty);
    if (dirty == NULL)
        return NULL;
    if (!PyDict_CheckExact(dirty)) {
        Py_DECREF(dirty);
        PyErr_SetString(PyExc_TypeError, "the meter's _dirty is not a dict");
        return NULL;
    }
    Py_ssize_t n = PyDict_GET_SIZE(dirty);
    if (n == 0) {
        Py_DECREF(dirty);
        return PyLong_FromLong(0);
    }
    PyObject *fresh = PyDict_New();
    if (fresh == NULL || PyObject_SetAttr(meter, s_dirty, fresh) < 0) {
        Py_XDECREF(fresh);
        Py_DECREF(dirty);
        return NULL;
    }
    Py_DECREF(fresh);
    Emitter x;
    if (emitter_load(&x, meter) < 0) {
        Py_DECREF(dirty);
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *t;
    int r = 0;
    while (r == 0 && PyDict_Next(dirty, &pos, &k, &t)) {
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 5 || !PyObject_TypeCheck(PyTuple_GET_ITEM(t, 0), flow_type)) {
            PyErr_SetString(PyExc_TypeError, "the meter's _dirty holds something else than (flow, ts, fwd, vlans, final)");
            r = -1;
            break;
        }
        Py_INCREF(t);   /* the sink may run anything */
        r = emit_sample_one(&x, PyTuple_GET_ITEM(t, 0), PyTuple_GET_ITEM(t, 1), PyTuple_GET_ITEM(t, 2),
                            PyTuple_GET_ITEM(t, 3), PyTuple_GET_ITEM(t, 4));
        Py_DECREF(t);
    }
    emitter_clear(&x);
    Py_DECREF(dirty);
    if (r < 0)
        return NULL;
    return PyLong_FromSsize_t(n);
}

static PyObject *s_port = NULL, *s_unknown_lc = NULL;
static const char *verdict_meta[4] = {"http", "tls", "quic", "ssh"};

typedef struct {
    PyObject *meter, *table, *sink_flow, *sink_verdict, *m_end, *m_count, *dirty, *closing, *by_id,
        *recent, *recent_popitem, *port_guess, *probe, *datalink, *raw, *idx;
    PyObject *ports;   /* the port guess's table (flows.PortTable: (transport, port) -> name), or NULL */
    Counters *ctr;
    Emitter em;   /* a coalesced sample still to send when its flow ends (loaded at the first) */
    int em_loaded;
    long long recent_max;
    double vwait;
    int loaded;
} Ender;

static void ender_clear(Ender *e) {
    if (e->em_loaded)
        emitter_clear(&e->em);
    e->em_loaded = 0;
    Py_CLEAR(e->ctr);
    Py_CLEAR(e->sink_flow);
    Py_CLEAR(e->sink_verdict);
    Py_CLEAR(e->m_end);
    Py_CLEAR(e->m_count);
    Py_CLEAR(e->raw);
    Py_CLEAR(e->idx);
    Py_CLEAR(e->dirty);
    Py_CLEAR(e->closing);
    Py_CLEAR(e->by_id);
    Py_CLEAR(e->recent);
    Py_CLEAR(e->recent_popitem);
    Py_CLEAR(e->port_guess);
    Py_CLEAR(e->ports);
    Py_CLEAR(e->probe);
    Py_CLEAR(e->datalink);
}


/* what ending a flow needs, loaded at the first flow a call ends (most calls end none) */
static int ender_load(Ender *e) {
    PyObject *meter = e->meter, *sink = NULL;
    if ((e->ctr = meter_counters(meter)) == NULL || (sink = mattr(meter, "sink")) == NULL
        || (e->sink_flow = mattr(sink, "flow")) == NULL || (e->sink_verdict = mattr(meter, "_sink_verdict")) == NULL
        || (e->dirty = mattr(meter, "_dirty")) == NULL || (e->closing = mattr(meter, "_closing")) == NULL
        || (e->by_id = mattr(meter, "_by_id")) == NULL || (e->recent = mattr(meter, "_recent_ev")) == NULL
        || (e->port_guess = mattr(meter, "port_guess")) == NULL || (e->probe = mattr(meter, "probe")) == NULL
        || (e->datalink = mattr(meter, "datalink")) == NULL
        || meter_ll(meter, "recent_evidence_max", &e->recent_max) < 0 || attr_d(meter, "_vwait", &e->vwait) < 0) {
        Py_XDECREF(sink);
        return -1;
    }
    e->raw = sink_raw(sink, "raw_records");
    e->idx = e->raw ? sink_raw(sink, "raw_index") : NULL;
    Py_DECREF(sink);
    if (e->port_guess != Py_None) {   /* a flows.PortTable: its table, looked up here instead of calling it */
        PyObject *a = PyObject_GetAttrString(e->port_guess, "_ft_ports");
        if (a != NULL && PyDict_CheckExact(a))
            e->ports = a;
        else
            Py_XDECREF(a);
        PyErr_Clear();
    }
    if (!PyDict_Check(e->dirty) || !PyDict_Check(e->closing) || !PyDict_Check(e->by_id) || !PyDict_Check(e->recent)) {
        PyErr_SetString(PyExc_TypeError, "the meter's _dirty/_closing/_by_id/_recent_ev are not dicts");
        return -1;
    }
    e->loaded = 1;
    return 0;
}

/* a method of o, got once per call */
static PyObject *lazy_method(PyObject **slot, PyObject *o, const char *name) {
    if (*slot == NULL)
        *slot = mattr(o, name);
    return *slot;
}

/* FlowMeter._remove: the flow's two entries out of the table (where they are still its own) */
static int remove_flow(Ender *e, PyObject *f) {
    PyObject *k = NSLOT(f, N_KEY);
    if (k == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Flow.key is not set");
        return -1;
    }
    PyObject *hit = PyDict_GetItemWithError(e->table, k);
    if (hit == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) < 1 || PyTuple_GET_ITEM(hit, 0) != f)
        return 0;
    Py_INCREF(k);
    int r = PyObject_DelItem(e->table, k);
    Py_DECREF(k);
    if (r < 0)
        return -1;
    e->ctr->nflows--;
    PyObject *rk = NSLOT(f, N_RKEY);
    if (rk == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Flow.rkey is not set");
        return -1;
    }
    hit = PyDict_GetItemWithError(e->table, rk);
    if (hit == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (PyTuple_Check(hit) && PyTuple_GET_SIZE(hit) >= 1 && PyTuple_GET_ITEM(hit, 0) == f) {
        Py_INCREF(rk);
        r = PyObject_DelItem(e->table, rk);
        Py_DECREF(rk);
        return r;
    }
    return 0;
}

/* an int slot (new-flow slots) as a long long */
static int nslot_ll(PyObject *f, int k, long long *out) {
    PyObject *v = NSLOT(f, k);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "Flow.%s is not set", new_slot_names[k]);
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* flows.PortTable's answer from its table: the lower port's name, else the higher port's, else '' (a new
 * reference; NULL: an error) */
static PyObject *table_guess(PyObject *ports, PyObject *t, PyObject *sp, PyObject *dp) {
    int le = PyObject_RichCompareBool(sp, dp, Py_LE);
    if (le < 0)
        return NULL;
    PyObject *side[2] = {le ? sp : dp, le ? dp : sp};
    for (int k = 0; k < 2; k++) {
        PyObject *key = PyTuple_Pack(2, t, side[k]);
        if (key == NULL)
            return NULL;
        PyObject *v = PyDict_GetItemWithError(ports, key);   /* borrowed */
        Py_DECREF(key);
        if (v == NULL && PyErr_Occurred())
            return NULL;
        int truth = v == NULL ? 0 : PyObject_IsTrue(v);
        if (truth < 0)
            return NULL;
        if (truth) {
            Py_INCREF(v);
            return v;
        }
    }
    return ref(s_empty);
}

/* FlowMeter._publish_end's record and verdict for a flow _end just ended (no verdict pending) */
static int publish_end(Ender *e, PyObject *f) {
    PyObject *v = NSLOT(f, N_VERDICT), *app = NULL, *application = NULL, *category = NULL, *host = NULL,
             *conf = NULL, *r;
    int rc = -1;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Flow.verdict is not set");
        return -1;
    }
    Py_INCREF(v);
    if (v != Py_None) {
        if ((app = mattr(v, "app_protocol")) == NULL || (application = mattr(v, "application")) == NULL
            || (category = mattr(v, "category")) == NULL || (host = mattr(v, "host")) == NULL
            || (conf = mattr(v, "confidence")) == NULL)
            goto done;
        int unk = PyObject_RichCompareBool(conf, s_unknown_lc, Py_NE);
        if (unk < 0)
            goto done;
        if (!unk)
            Py_SETREF(conf, ref(s_empty));
    } else {
        app = ref(s_unknown);
        application = ref(s_empty);
        category = ref(s_empty);
        host = ref(s_empty);
        conf = ref(s_empty);
        if (e->port_guess != Py_None) {   /* a flow that never got a verdict: guess by port */
            PyObject *t = RSLOT(f, R_TRANSPORT), *sp = RSLOT(f, R_SPORT), *dp = RSLOT(f, R_DPORT);
            if (t == NULL || sp == NULL || dp == NULL) {
                PyErr_SetString(PyExc_AttributeError, "Flow.transport/sport/dport is not set");
                goto done;
            }
            PyObject *g = e->ports != NULL ? table_guess(e->ports, t, sp, dp)
                : PyObject_CallFunctionObjArgs(e->port_guess, t, sp, dp, NULL);
            if (g == NULL) {   /* a hook's bug must not stop metering (an Exception, as there) */
                if (!PyErr_ExceptionMatches(PyExc_Exception))
                    goto done;
                PyErr_Clear();
                r = lazy_method(&e->m_count, e->meter, "_count") == NULL ? NULL
                    : PyObject_CallFunction(e->m_count, "s", "port_guess_errors");
                if (r == NULL)
                    goto done;
                Py_DECREF(r);
            } else {
                if (PyUnicode_Check(g) && PyUnicode_GET_LENGTH(g) > 0) {
                    PyObject *cut = PyUnicode_Substring(g, 0, 64);
                    if (cut == NULL) {
                        Py_DECREF(g);
                        goto done;
                    }
                    Py_SETREF(app, cut);
                    Py_SETREF(conf, ref(s_port));
                }
                Py_DECREF(g);
            }
        }
    }
    PyObject *last = SLOT(f, LAST);
    if (last == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Flow.last is not set");
        goto done;
    }
    if (emit_record(e->raw, e->idx, e->sink_flow, f, s_end, last, e->probe, app, application, category, host, conf) < 0)
        goto done;
    if (v != Py_None && e->sink_verdict != Py_None) {
        int known = PyObject_RichCompareBool(app, s_unknown, Py_NE);
        if (known < 0)
            goto done;
        int meta = 0;
        for (int k = 0; known && !meta && k < 4; k++) {
            PyObject *x = mattr(v, verdict_meta[k]);
            if (x == NULL)
                goto done;
            meta = x != Py_None;
            Py_DECREF(x);
        }
        if (known && meta) {
            if ((r = PyObject_CallOneArg(e->sink_verdict, v)) == NULL)
                goto done;
            Py_DECREF(r);
        }
    }
    rc = 0;
done:
    Py_DECREF(v);
    Py_XDECREF(app);
    Py_XDECREF(application);
    Py_XDECREF(category);
    Py_XDECREF(host);
    Py_XDECREF(conf);
    return rc;
}

/* _housekeep's "self._remove(f); self._end(f, f.end_reason if f.state else why)" */
static int end_idle(Ender *e, PyObject *f, PyObject *why) {
    long long state, pending, proto;
    if ((!e->loaded && ender_load(e) < 0) || remove_flow(e, f) < 0 || slot_ll(f, STATE, &state) < 0)
        return -1;
    if (state == 2)   /* ENDED: _end returns at once */
        return 0;
    PyObject *reason = state ? RSLOT(f, R_END_REASON) : why, *fid = SLOT(f, FLOW_ID);
    if (reason == NULL || fid == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Flow.end_reason/flow_id is not set");
        return -1;
    }
    if (PyDict_GET_SIZE(e->dirty) > 0) {   /* a coalesced sample still to send: sent first, as _end sends it */
        PyObject *d = PyDict_GetItemWithError(e->dirty, fid);
        if (d == NULL && PyErr_Occurred())
            return -1;
        if (d != NULL) {
            if (!PyTuple_Check(d)) {
                PyErr_SetString(PyExc_TypeError, "the meter's _dirty holds something else than tuples");
                return -1;
            }
            if (PyTuple_GET_SIZE(d) != 5 || !PyObject_TypeCheck(PyTuple_GET_ITEM(d, 0), flow_type)) {
                PyErr_SetString(PyExc_TypeError, "the meter's _dirty holds something else than (flow, ts, fwd, vlans, final)");
                return -1;
            }
            Py_INCREF(d);
            int r = PyDict_DelItem(e->dirty, fid);
            if (r == 0 && !e->em_loaded) {
                r = emitter_load(&e->em, e->meter);
                e->em_loaded = r == 0;
            }
            if (r == 0)
                r = emit_sample_one(&e->em, PyTuple_GET_ITEM(d, 0), PyTuple_GET_ITEM(d, 1), PyTuple_GET_ITEM(d, 2),
                                    PyTuple_GET_ITEM(d, 3), PyTuple_GET_ITEM(d, 4));
            Py_DECREF(d);
            if (r < 0)
                return -1;
        }
    }
    if (nslot_ll(f, N_PENDING, &pending) < 0)
        return -1;
    int slow = 0;
    if (pending > 0 && e->vwait > 0) {   /* verdicts still expected: closing, unless the last one was final */
        PyObject *vf = NSLOT(f, N_VERDICT_FINAL);
        if ((slow = vf == NULL ? -1 : PyObject_Not(vf)) < 0) {
            if (vf == NULL)
                PyErr_SetString(PyExc_AttributeError, "Flow.verdict_final is not set");
            return -1;
        }
    }
    if (!slow && PyDict_GET_SIZE(e->closing) > 0 && (slow = PyDict_Contains(e->closing, fid)) < 0)
        return -1;
    if (slow) {   /* verdicts to wait for: the meter's own _end (closing) */
        PyObject *r = lazy_method(&e->m_end, e->meter, "_end") == NULL ? NULL
            : PyObject_CallFunctionObjArgs(e->m_end, f, reason, NULL);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    Py_INCREF(reason);
    rput(f, R_END_REASON, reason);
    put(f, STATE, PyLong_FromLong(2));
    put(f, SAMPLING, ref(zero_int));
    put(f, SD, ref(Py_None));
    put(f, DD, ref(Py_None));
    put(f, DIRS, ref(Py_None));
    if (nslot_ll(f, N_PROTO, &proto) < 0)
        return -1;
    if (proto == 6) {
        long long sp, dp;
        if (slot_ll(f, S_PKTS, &sp) < 0 || slot_ll(f, D_PKTS, &dp) < 0)
            return -1;
        if (sp == 0 || dp == 0)
            e->ctr->one_way_tcp_flows++;
    }
    /* _publish_end */
    if (PyDict_GET_SIZE(e->by_id) > 0) {
        int has = PyDict_Contains(e->by_id, fid);
        if (has < 0 || (has && PyDict_DelItem(e->by_id, fid) < 0))
            return -1;
        if (has && pending > 0) {
            /* verdicts still expected: harmless after a final verdict; otherwise the record goes without them */
            PyObject *vf = NSLOT(f, N_VERDICT_FINAL);
            int fin = vf == NULL ? -1 : PyObject_IsTrue(vf);
            if (fin < 0) {
                if (vf == NULL)
                    PyErr_SetString(PyExc_AttributeError, "Flow.verdict_final is not set");
                return -1;
            }
            if (meter_count(e->meter, fin ? "verdicts_after_final" : "verdicts_waited_out", pending) < 0)
                return -1;
            e->ctr->pending -= pending;
            nput(f, N_PENDING, ref(zero_int));
        }
    }
    e->ctr->flows_ended++;
    PyObject *ev = SLOT(f, EV);
    if (ev != NULL && ev != Py_None) {
        e->ctr->ev_flows--;
        PyObject *t = PyTuple_Pack(2, f, e->datalink);
        int r = t == NULL ? -1 : PyObject_SetItem(e->recent, fid, t);
        Py_XDECREF(t);
        if (r < 0)
            return -1;
        while (PyDict_GET_SIZE(e->recent) > e->recent_max) {
            PyObject *x = lazy_method(&e->recent_popitem, e->recent, "popitem") == NULL ? NULL
                : PyObject_CallOneArg(e->recent_popitem, Py_False);
            if (x == NULL)
                return -1;
            Py_DECREF(x);
        }
    }
    return publish_end(e, f);
}

static long long expired_total = 0;   /* flows expire_now ended since the module was loaded (ended_in_c()) */

static PyObject *expire(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *meter, *now_o, *why = s_idle;
    if (!PyArg_ParseTuple(args, "OO!|U", &meter, &PyFloat_Type, &now_o, &why))
        return NULL;
    House h;
    memset(&h, 0, sizeof h);
    PyObject *r = house_load(&h, meter) < 0 ? NULL : expire_now(meter, now_o, why, &h);
    house_clear(&h);
    return r;
}

/* ended_in_c() -> int: how many flows expire() (and the loop's housekeeping) ended so far, for tests */
static PyObject *ended_in_c(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLongLong(expired_total);
}

/* expire(meter, now, why) without its argument parsing: FlowMeter._housekeep's two loops, with the meter's
   attributes they read in h (house_load) */
static PyObject *expire_now(PyObject *meter, PyObject *now_o, PyObject *why, House *h) {
    if (!new_bound || rec_cls == NULL || flow_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "expire() needs bind() and bind_record()");
        return NULL;
    }
    double now = PyFloat_AS_DOUBLE(now_o), idle = h->idle;
    Ender e;
    memset(&e, 0, sizeof e);
    e.meter = meter;
    e.table = ref(h->table);
    PyObject *move_to_end = NULL;
    double cutoff = now - idle, grace = h->grace;
    long long ended = 0;
    /* TCP flows closed by FIN/RST whose grace period is over, in the order they closed */
    PyObject *closed = ref(h->closed), *popleft = NULL;
    for (;;) {
        Py_ssize_t nc = PyObject_Length(closed);
        if (nc <= 0) {
            if (nc < 0)
                goto closed_error;
            break;
        }
        PyObject *f = PySequence_GetItem(closed, 0), *ca;
        if (f == NULL)
            goto closed_error;
        double at;
        long long state;
        if (!PyObject_TypeCheck(f, flow_type) || (ca = NSLOT(f, N_CLOSED_AT)) == NULL
            || ((at = PyFloat_AsDouble(ca)) == -1.0 && PyErr_Occurred())) {
            Py_DECREF(f);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "the meter's _closed holds something else than closed flows");
            goto closed_error;
        }
        if (!(at + grace <= now)) {
            Py_DECREF(f);
            break;
        }
        PyObject *x = lazy_method(&popleft, closed, "popleft") == NULL ? NULL : PyObject_CallNoArgs(popleft);
        Py_XDECREF(x);
        int r = x == NULL || slot_ll(f, STATE, &state) < 0 ? -1 : 0;
        if (r == 0 && state == 1) {   /* CLOSED */
            r = end_idle(&e, f, why);
            ended++;
        }
        Py_DECREF(f);
        if (r < 0)
            goto closed_error;
    }
    Py_XDECREF(popleft);
    Py_DECREF(closed);
    closed = popleft = NULL;
    while (PyDict_GET_SIZE(e.table) > 0) {
        PyObject *it = PyObject_GetIter(e.table), *key = it ? PyIter_Next(it) : NULL;
        Py_XDECREF(it);
        if (key == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "the flow table changed size while it was read");
            goto error;
        }
        PyObject *hit = PyDict_GetItemWithError(e.table, key), *f;
        if (hit == NULL || !PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2
            || !PyObject_TypeCheck((f = PyTuple_GET_ITEM(hit, 0)), flow_type)) {
            Py_DECREF(key);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "the flow table holds something else than (Flow, bool)");
            goto error;
        }
        int fwd = PyTuple_GET_ITEM(hit, 1) == Py_True, sk = fwd ? S_STAMP : D_STAMP;
        Py_INCREF(f);
        PyObject *so = get(f, sk), *lo;
        double stamp = so ? PyFloat_AsDouble(so) : -1.0, last = 0.0;
        int r = 0;
        if (stamp == -1.0 && PyErr_Occurred()) {
            r = -1;
        } else if (stamp > cutoff) {
            if (stamp <= now) {
                Py_DECREF(f);
                Py_DECREF(key);
                break;
            }
            put(f, sk, ref(now_o));   /* stamped in the future (capture times out of order): re-stamp */
            PyObject *x = lazy_method(&move_to_end, e.table, "move_to_end") == NULL ? NULL
                : PyObject_CallOneArg(move_to_end, key);
            r = x ? 0 : -1;
            Py_XDECREF(x);
        } else if ((lo = get(f, LAST)) == NULL || ((last = PyFloat_AsDouble(lo)) == -1.0 && PyErr_Occurred())) {
            r = -1;
        } else if (last <= cutoff) {
            r = end_idle(&e, f, why);
            ended++;
        } else {
            put(f, sk, ref(lo));
            PyObject *x = lazy_method(&move_to_end, e.table, "move_to_end") == NULL ? NULL
                : PyObject_CallOneArg(move_to_end, key);
            r = x ? 0 : -1;
            Py_XDECREF(x);
        }
        Py_DECREF(f);
        Py_DECREF(key);
        if (r < 0)
            goto error;
    }
    Py_XDECREF(move_to_end);
    Py_DECREF(e.table);
    ender_clear(&e);
    expired_total += ended;
    return PyLong_FromLongLong(ended);
error:
    Py_XDECREF(move_to_end);
    Py_DECREF(e.table);
    ender_clear(&e);
    return NULL;
closed_error:
    Py_XDECREF(popleft);
    Py_DECREF(closed);
    Py_DECREF(e.table);
    ender_clear(&e);
    return NULL;
}

static PyMethodDef methods[] = {
    {"lean", (PyCFunction)(void (*)(void))lean, METH_FASTCALL, "A copy of an event's __dict__ without its default-valued fields (batch_json)."},
    {"b64_json", b64_json, METH_O, "A list of bytes as the JSON array of pydantic's base64 texts (bytes)."},
    {"ended_in_c", ended_in_c, METH_NOARGS, "How many flows expire() ended since the module was loaded (tests)."},
    {"bind", meter_bind, METH_VARARGS, "Learn the slot offsets of the meter's Flow and _Dir classes."},
    {"bind_record", bind_record, METH_VARARGS, "Learn FlowRecord (and BaseModel's slots) for record(); False when its fields differ."},
    {"record", record, METH_VARARGS, "FlowMeter._record's FlowRecord, built in C."},
    {"bind_sample", bind_sample, METH_VARARGS, "Learn FlowSample for sample(); False when its fields differ."},
    {"sample", sample_event, METH_VARARGS, "FlowMeter._emit_sample's FlowSample, built in C."},
    {"bind_decode", bind_decode, METH_VARARGS, "decode()'s tables for the loop's L2, fragment and other-protocol frames."},
    {"record_out", record_out, METH_VARARGS, "FlowMeter._out: a flow record's JSON into a list, else the FlowRecord to a sink."},
    {"emit_sample", emit_sample, METH_VARARGS, "FlowMeter._emit_sample in C (the sample's JSON into sink.raw_samples where it has them)."},
    {"flush_samples", flush_samples, METH_O, "FlowMeter.flush_samples in C: one sample per flow of meter._dirty."},
    {"bind_flat", bind_flat, METH_VARARGS, "FlowRecord's (names, defaults, by_name) and float_json, for end records written as JSON by expire()."},
    {"b64_batch", b64_batch, METH_VARARGS, "batch_json's document for samples, written in one pass (None: take the general path)."},
    {"flat_batch", flat_batch, METH_VARARGS, "batch_json's document for flat events, written in one pass (None: take the general path)."},
    {"expire", expire, METH_VARARGS, "FlowMeter._housekeep's loops: end closed flows past their grace, then flows idle since now - idle_timeout."},
    {"run", run, METH_VARARGS, "Meter records of known flows that need only counters; stop at the first that needs Python."},
    {"ring_add", ring_add, METH_VARARGS, "Append a packet to a flow's evidence ring and trim it (flows.ring_add in C)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_meter", NULL, -1, methods};

PyMODINIT_FUNC PyInit__meter(void) {
    b64_init();
    empty_tuple = PyTuple_New(0);
    s_prev_frame = PyUnicode_InternFromString("_prev_frame");
    s_prev_ts = PyUnicode_InternFromString("_prev_ts");
    s_next_house = PyUnicode_InternFromString("_next_house");
    s_fin = PyUnicode_InternFromString("fin");
    s_rst = PyUnicode_InternFromString("rst");
    s_dirty = PyUnicode_InternFromString("_dirty");
    s_dir_s = PyUnicode_InternFromString("s");
    s_dir_d = PyUnicode_InternFromString("d");
    if (!s_dirty || !s_dir_s || !s_dir_d)
        return NULL;
    for (int k = 0; k < NKEYS; k++) {
        if ((rec_keys[k] = PyUnicode_InternFromString(rec_key_names[k])) == NULL)
            return NULL;
    }
    s_flow = PyUnicode_InternFromString("flow");
    s_empty = PyUnicode_InternFromString("");
    s_end = PyUnicode_InternFromString("end");
    for (int c = 0; c < 256; c++)
        json_esc[c] = c < 0x20 || c == '"' || c == '\\';
    s_idle = PyUnicode_InternFromString("idle");
    s_port = PyUnicode_InternFromString("port");
    s_unknown_lc = PyUnicode_InternFromString("unknown");
    if (!s_idle || !s_port || !s_unknown_lc)
        return NULL;
    s_start = PyUnicode_InternFromString("start");
    for (int k = 0; k < NQKEYS; k++) {
        if ((sample_keys[k] = PyUnicode_InternFromString(sample_key_names[k])) == NULL)
            return NULL;
    }
    sample_template = PyDict_New();
    for (int k = 0; sample_template != NULL && k < NQKEYS; k++) {
        if (PyDict_SetItem(sample_template, sample_keys[k], Py_None) < 0)
            return NULL;
    }
    s_sample_type = PyUnicode_InternFromString("sample");
    if (!sample_template || !s_sample_type)
        return NULL;
    s_unknown = PyUnicode_InternFromString("Unknown");
    s_bfd = PyUnicode_InternFromString("bfd_flows");
    s_tun_gre = PyUnicode_InternFromString("GRE");
    s_tun_gre_n = PyUnicode_InternFromString("tunnel_gre_flows");
    s_tun_erspan = PyUnicode_InternFromString("ERSPAN");
    s_tun_erspan_n = PyUnicode_InternFromString("tunnel_erspan_flows");
    s_tun_vxlan = PyUnicode_InternFromString("VXLAN");
    s_tun_vxlan_n = PyUnicode_InternFromString("tunnel_vxlan_flows");
    s_tun_gtp = PyUnicode_InternFromString("GTP");
    s_tun_ipip = PyUnicode_InternFromString("IP-in-IP");
    s_tun_gtp_n = PyUnicode_InternFromString("tunnel_gtp_flows");
    s_tun_ipip_n = PyUnicode_InternFromString("tunnel_ip-in-ip_flows");
    if (!s_tun_gtp || !s_tun_ipip || !s_tun_gtp_n || !s_tun_ipip_n || !s_tun_vxlan || !s_tun_vxlan_n
        || !s_tun_gre || !s_tun_gre_n || !s_tun_erspan || !s_tun_erspan_n)
        return NULL;
    if (!s_start || !s_unknown || !s_bfd)
        return NULL;
    zero_int = PyLong_FromLong(0);
    zero_float = PyFloat_FromDouble(0.0);
    if (zero_float == NULL)
        return NULL;
    rec_template = PyDict_New();
    for (int k = 0; rec_template != NULL && k < NKEYS; k++) {
        if (PyDict_SetItem(rec_template, rec_keys[k], Py_None) < 0)
            return NULL;
    }
    if (!rec_template || !s_flow || !s_empty || !s_end || !zero_int)
        return NULL;
    if (empty_tuple == NULL || !s_prev_frame || !s_prev_ts || !s_next_house || !s_fin || !s_rst)
        return NULL;
    if (PyType_Ready(&CountersType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* run() takes fastpath.RawBatch records too (pcap_records' raw index): the size of its index entries */
    if (PyModule_AddIntConstant(m, "RAW_BATCHES", (long)RAW_ENTRY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&CountersType);
    if (PyModule_AddObject(m, "Counters", (PyObject *)&CountersType) < 0) {
        Py_DECREF(&CountersType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
