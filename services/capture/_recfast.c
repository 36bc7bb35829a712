/* The packet recorder's per-packet step in C (services/capture/recorder.py, pcap_pack_py is its twin).
 *
 * pcap_pack(recs, start, room, until_ts, max_rec) -> (data, stop, too_big, last_ts, packets)
 *   recs: a list of (float ts, bytes frame).  From recs[start], pcap records (16-byte little-endian
 *   header, microseconds, then the frame) are concatenated into data, stopping before the first
 *   record that would pass `room` bytes or whose ts >= until_ts; records longer than max_rec are
 *   skipped (counted in too_big).  stop is the index of the first record not consumed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static PyObject *pcap_pack(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *recs;
    Py_ssize_t start, room, max_rec;
    double until;
    if (!PyArg_ParseTuple(args, "O!nndn", &PyList_Type, &recs, &start, &room, &until, &max_rec))
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
        put32(o + 12, (uint32_t)len);
        memcpy(o + 16, PyBytes_AS_STRING(fr), (size_t)len);
        o += 16 + len;
        last = ts;
        packets++;
    }
    return Py_BuildValue("(NnndN)", data, stop, too_big, last, PyLong_FromSsize_t(packets));
}

static PyMethodDef methods[] = {
    {"pcap_pack", pcap_pack, METH_VARARGS, "Concatenate (ts, frame) records as pcap records (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_recfast", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__recfast(void) { return PyModule_Create(&module); }
