/* The bounded pre-scan's walk, compiled: streams/wire/prescan.py is its reference and gives every message.
 *
 * Why C: a replayed 10-chunk record spent ~60 of its ~200 us of decoding in the Python walk, more than
 * fastavro's own reader (benchmarks/decode.py prints both). This walk decides the same thing (whether a
 * record is within its caps and every declared length fits in the bytes left) and finds the same cut
 * ranges; when it refuses a record, prescan.py walks it again in Python to say why, so the messages come
 * from one place. Every read is checked against the end of the buffer; the stack is on the heap, so
 * nothing here recurses, whatever the input's nesting.
 *
 * The schema arrives as a program: int32 words, nodes addressed by their index (prescan.py:_program).
 *   LEN                          a string or bytes: a length, then that many bytes
 *   VARINT                       an int or long, at most 10 bytes
 *   SKIP n                       n bytes (null, boolean, float, double, fixed)
 *   UNION n b0 .. b(n-1)         a branch index, then that branch
 *   ENUM n                       a symbol index below n
 *   ARRAY flat n i0 .. i(n-1)    blocks of items, each item the n nodes (a map's is key, value);
 *                                flat: strings and numbers only (a sized block never matters for cuts)
 *   RECORD doc n f0 .. f(n-1)    the fields in order; doc: a Document, counted against the caps
 *   CUT inner                    a field whose non-null value's byte range is reported
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

enum { K_LEN, K_VARINT, K_SKIP, K_UNION, K_ENUM, K_ARRAY, K_RECORD, K_CUT };

typedef __int128 wide;            /* a 10-byte varint holds 70 bits: no value here overflows */
typedef unsigned __int128 uwide;

typedef struct {
    int32_t node;      /* the RECORD, ARRAY or CUT node this frame walks */
    int32_t next;      /* the next field or item to visit */
    int64_t left;      /* ARRAY: items left in the block after the current one */
    Py_ssize_t start;  /* CUT: where the value began */
} Frame;

typedef struct {
    const uint8_t *data;
    Py_ssize_t end, pos;
    const int32_t *prog;
    Frame *stack;
    Py_ssize_t depth_used, capacity;
    long long documents_deep, documents, max_depth, max_documents;
    int sized;
    PyObject *cuts;    /* a list to append (start, end) to, or NULL */
} Walk;

/* Results: 0 goes on; REFUSED means the record is refused (prescan.py says why); ERROR a Python error. */
#define REFUSED 1
#define ERROR 2

static int read_long(Walk *w, wide *out) {
    uwide value = 0;
    int shift = 0;
    for (;;) {
        if (w->pos >= w->end) return REFUSED;
        uint8_t byte = w->data[w->pos++];
        value |= (uwide)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) break;
        shift += 7;
        if (shift > 63) return REFUSED;  /* runs over 10 bytes */
    }
    *out = (wide)(value >> 1) ^ -(wide)(value & 1);
    return 0;
}

/* An array or map block's item count, checked against the bytes left (each item takes one at least). */
static int read_block(Walk *w, int64_t *count) {
    wide n, size;
    if (read_long(w, &n)) return REFUSED;
    if (n < 0) {  /* a block written with its size in bytes */
        n = -n;
        if (read_long(w, &size)) return REFUSED;
        if (size < 0 || size > w->end - w->pos) return REFUSED;
    }
    if (n > w->end - w->pos) return REFUSED;
    *count = (int64_t)n;
    return 0;
}

static int push(Walk *w, int32_t node, int64_t left) {
    if (w->depth_used == w->capacity) {
        Py_ssize_t capacity = w->capacity * 2;
        Frame *grown = PyMem_Realloc(w->stack, (size_t)capacity * sizeof(Frame));
        if (grown == NULL) {
            PyErr_NoMemory();
            return ERROR;
        }
        w->stack = grown;
        w->capacity = capacity;
    }
    Frame *frame = &w->stack[w->depth_used++];
    frame->node = node;
    frame->next = 0;
    frame->left = left;
    frame->start = w->pos;
    return 0;
}

/* A sized block's count is a negative zigzag varint: its first byte is odd. */
static void note_sized(Walk *w, const int32_t *array) {
    if (!array[1] && w->pos < w->end && (w->data[w->pos] & 1)) w->sized = 1;
}

/* Read a scalar in place, or push the frame of a node that holds others. */
static int visit(Walk *w, int32_t node) {
    wide value;
    for (;;) {
        const int32_t *p = w->prog + node;
        switch (p[0]) {
        case K_LEN:
            if (read_long(w, &value)) return REFUSED;
            if (value < 0 || value > w->end - w->pos) return REFUSED;
            w->pos += (Py_ssize_t)value;
            return 0;
        case K_VARINT:
            return read_long(w, &value);
        case K_SKIP:
            w->pos += p[1];  /* past the end is caught by the next read or the final check */
            return 0;
        case K_ENUM:
            if (read_long(w, &value)) return REFUSED;
            return value < 0 || value >= p[1] ? REFUSED : 0;
        case K_UNION:
            if (read_long(w, &value)) return REFUSED;
            if (value < 0 || value >= p[1]) return REFUSED;
            node = p[2 + (int)value];
            continue;
        case K_CUT:
            if (w->pos >= w->end) return REFUSED;
            if (w->data[w->pos] == 0) {  /* null: nothing to cut */
                w->pos++;
                return 0;
            }
            if (push(w, node, 0)) return ERROR;
            node = p[1];
            continue;
        case K_RECORD:
            if (push(w, node, 0)) return ERROR;
            if (p[1]) {
                w->documents_deep++;
                w->documents++;
                if (w->documents_deep > w->max_depth || w->documents > w->max_documents) return REFUSED;
            }
            return 0;
        case K_ARRAY: {
            int64_t count;
            if (w->pos >= w->end) return REFUSED;
            if (w->data[w->pos] == 0) {  /* empty */
                w->pos++;
                return 0;
            }
            note_sized(w, p);
            if (read_block(w, &count)) return REFUSED;
            return count ? push(w, node, count - 1) : 0;
        }
        default:
            PyErr_Format(PyExc_SystemError, "pre-scan program: unknown node kind %d", p[0]);
            return ERROR;
        }
    }
}

/* Go on with the frame on top of the stack: its next field or item, or the end of it. */
static int step(Walk *w) {
    Frame *frame = &w->stack[w->depth_used - 1];
    const int32_t *p = w->prog + frame->node;
    if (p[0] == K_CUT) {
        w->depth_used--;
        if (w->cuts == NULL) return 0;
        PyObject *range = Py_BuildValue("(nn)", frame->start, w->pos);
        if (range == NULL) return ERROR;
        int failed = PyList_Append(w->cuts, range);
        Py_DECREF(range);
        return failed ? ERROR : 0;
    }
    if (frame->next < p[2]) {
        int32_t child = p[3 + frame->next++];
        return visit(w, child);  /* may move the stack: frame is not used after it */
    }
    if (p[0] == K_RECORD) {
        if (p[1]) w->documents_deep--;
        w->depth_used--;
        return 0;
    }
    if (frame->left > 0) {  /* K_ARRAY: the next item of the block */
        frame->left--;
        frame->next = 0;
        return 0;
    }
    int64_t count;
    note_sized(w, p);
    if (read_block(w, &count)) return REFUSED;
    if (count == 0) {
        w->depth_used--;
    } else {
        frame->left = count - 1;
        frame->next = 0;
    }
    return 0;
}

PyDoc_STRVAR(walk_doc,
"walk(data, program, root, max_depth, max_documents, cuts) -> (end, sized) | None\n\n"
"The pre-scan of one record: None if it is refused (prescan.py walks it again to say why), else the\n"
"position after the root's value and whether a block of records was written with its size in bytes.\n"
"cuts: a list the byte ranges of CUT fields are appended to, or None.");

static PyObject *walk(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer data, program;
    Py_ssize_t root;
    long long max_depth, max_documents;
    PyObject *cuts;
    if (!PyArg_ParseTuple(args, "y*y*nLLO", &data, &program, &root, &max_depth, &max_documents, &cuts))
        return NULL;
    PyObject *result = NULL;
    Walk w = {.data = data.buf, .end = data.len, .pos = 0, .prog = program.buf, .capacity = 64,
              .max_depth = max_depth, .max_documents = max_documents, .cuts = cuts == Py_None ? NULL : cuts};
    if (w.cuts != NULL && !PyList_Check(w.cuts)) {
        PyErr_SetString(PyExc_TypeError, "cuts must be a list or None");
        goto done;
    }
    if (root < 0 || root >= program.len / (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "root is outside the program");
        goto done;
    }
    w.stack = PyMem_Malloc((size_t)w.capacity * sizeof(Frame));
    if (w.stack == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int outcome = visit(&w, (int32_t)root);
    while (!outcome && w.depth_used) outcome = step(&w);
    if (outcome == REFUSED) {
        result = Py_NewRef(Py_None);
    } else if (!outcome) {
        result = Py_BuildValue("(nO)", w.pos, w.sized ? Py_True : Py_False);
    }
done:
    PyMem_Free(w.stack);
    PyBuffer_Release(&data);
    PyBuffer_Release(&program);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, walk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_prescan",
    .m_doc = "The bounded pre-scan's walk, compiled (streams/wire/prescan.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__prescan(void) {
    return PyModule_Create(&module);
}
