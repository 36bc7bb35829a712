/* The packet recorder's per-packet step in C (services/capture/recorder.py, pcap_pack_py is its twin).
 *
 * pcap_pack(recs, start, room, until_ts, max_rec[, cut_at, dlt]) -> (data, stop, too_big, last_ts, packets)
 *   recs: a list of (float ts, bytes frame).  From recs[start], pcap records (16-byte little-endian
 *   header, microseconds, then the frame) are concatenated into data, stopping before the first
 *   record that would pass `room` bytes or whose ts >= until_ts; records longer than max_rec are
 *   skipped (counted in too_big).  stop is the index of the first record not consumed.  A frame of
 *   cut_at bytes or more (0: none) gets wire_len's original length.
 *
 * wire_len(frame, dlt, cut_at) -> int: the twin of services/capture/evidence.py's wire_len.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static int is_vlan(unsigned et) { return et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200; }

/* evidence.wire_len: the link header plus the outermost IP header's length when that is more than the
 * frame holds and the frame is at least cut_at bytes long; else the frame's length */
static Py_ssize_t wire_len_c(const unsigned char *p, Py_ssize_t n, int dlt, Py_ssize_t cut_at) {
    if (cut_at <= 0 || n < cut_at)
        return n;
    Py_ssize_t off;
    long et = -1;
    if (dlt == 1) {
        if (n < 14)
            return n;
        off = 12;
        et = (p[12] << 8) | p[13];
        for (int tags = 0; is_vlan((unsigned)et) && tags < 4 && off + 6 <= n; tags++) {
            off += 4;
            et = (p[off] << 8) | p[off + 1];
        }
        off += 2;
    } else if (dlt == 12 || dlt == 14 || dlt == 101 || dlt == 228 || dlt == 229) {
        off = 0;
    } else if (dlt == 113) {
        off = 16;
        et = n >= 16 ? (p[14] << 8) | p[15] : -1;
    } else if (dlt == 276) {
        off = 20;
        et = n >= 20 ? (p[0] << 8) | p[1] : -1;
    } else if (dlt == 0 || dlt == 108) {
        off = 4;
    } else {
        return n;
    }
    if ((et != -1 && et != 0x0800 && et != 0x86DD) || off + 20 > n)
        return n;
    int v = p[off] >> 4;
    Py_ssize_t end = 0;
    if (v == 4 && et != 0x86DD) {
        Py_ssize_t ihl = (p[off] & 0xF) * 4, tot = (p[off + 2] << 8) | p[off + 3];
        if (ihl >= 20 && tot >= ihl)
            end = off + tot;
    } else if (v == 6 && et != 0x0800 && off + 40 <= n) {
        Py_ssize_t pl = (p[off + 4] << 8) | p[off + 5];
        if (pl)
            end = off + 40 + pl;
    }
    return end > n ? end : n;
}

static PyObject *wire_len(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *frame;
    int dlt;
    Py_ssize_t cut_at;
    if (!PyArg_ParseTuple(args, "O!in", &PyBytes_Type, &frame, &dlt, &cut_at))
        return NULL;
    return PyLong_FromSsize_t(wire_len_c((const unsigned char *)PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame),
                                         dlt, cut_at));
}

static PyObject *pcap_pack(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *recs;
    Py_ssize_t start, room, max_rec, cut_at = 0;
    int dlt = 1;
    double until;
    if (!PyArg_ParseTuple(args, "O!nndn|ni", &PyList_Type, &recs, &start, &room, &until, &max_rec, &cut_at, &dlt))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(recs), i, total = 0, stop = n, too_big = 0, packets = 0;
    double last = 0.0;
    if (start < 0)
        start = 0;
    /* pass 1: where to stop and how many bytes */
    for (i = start; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(recs, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_TypeError, "records must be (float, bytes) tuples");
            return NULL;
        }
        double ts = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 0));
        if (ts == -1.0 && PyErr_Occurred())
            return NULL;
        Py_ssize_t rlen = 16 + PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1));
        if (rlen > max_rec)
            continue;
        if (ts >= until || total + rlen > room) {
            stop = i;
            break;
        }
        total += rlen;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, total);
    if (data == NULL)
        return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(data);
    /* pass 2: fill */
    for (i = start; i < stop; i++) {
        PyObject *t = PyList_GET_ITEM(recs, i);
        PyObject *fr = PyTuple_GET_ITEM(t, 1);
        Py_ssize_t len = PyBytes_GET_SIZE(fr);
        if (16 + len > max_rec) {
            too_big++;
            continue;
        }
        double ts = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 0));
        long long us = (long long)floor(ts * 1000000.0 + 0.5);
        put32(o, (uint32_t)(us / 1000000));
        put32(o + 4, (uint32_t)(us % 1000000));
        put32(o + 8, (uint32_t)len);
        put32(o + 12, (uint32_t)wire_len_c((const unsigned char *)PyBytes_AS_STRING(fr), len, dlt, cut_at));
        memcpy(o + 16, PyBytes_AS_STRING(fr), (size_t)len);
        o += 16 + len;
        last = ts;
        packets++;
    }
    return Py_BuildValue("(NnndN)", data, stop, too_big, last, PyLong_FromSsize_t(packets));
}

static PyMethodDef methods[] = {
    {"pcap_pack", pcap_pack, METH_VARARGS, "Concatenate (ts, frame) records as pcap records (see the module source)."},
    {"wire_len", wire_len, METH_VARARGS, "A frame's original length for a pcap record (evidence.wire_len's twin)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_recfast", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__recfast(void) { return PyModule_Create(&module); }
