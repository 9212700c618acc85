/* Bounded Avro binary, compiled: the pre-scan's walk (streams/wire/prescan.py is its reference and gives
 * every message), a reader that builds the values fastavro's schemaless_reader builds, and a writer that
 * writes the bytes fastavro's schemaless_writer writes (for the values it takes; the rest go to fastavro).
 *
 * Why C: a replayed 10-chunk record spent ~60 of its ~200 us of decoding in the Python walk and ~70 in
 * fastavro's reader, which interprets the parsed schema's dicts field by field (benchmarks/decode.py
 * prints each). The walk decides what the Python walk decides (whether a record is within its caps and
 * every declared length fits in the bytes left) and finds the same cut ranges; when it refuses a record,
 * prescan.py walks it again in Python to say why, so the messages come from one place. The reader runs
 * only on a record the walk accepted, and still checks every read against the end of the buffer. The
 * walk keeps its stack on the heap; the reader recurses once per record or array, under Python's
 * recursion limit, on records whose depth the walk has capped.
 *
 * The schema arrives as a program: int32 words, nodes addressed by their index (streams/wire/program.py),
 * and a tuple of the Python objects it names (record field names, enum symbols).
 *   LEN bytes                    a string (bytes 0) or bytes (1): a length, then that many bytes
 *   VARINT long                  an int (long 0) or a long (1), at most 10 bytes
 *   SKIP n what                  n bytes: null (what 0), boolean (1), float (2), double (3), fixed (4)
 *   UNION n b0 .. b(n-1)         a branch index, then that branch
 *   ENUM n symbols               a symbol index below n; symbols: the object index of their tuple
 *   ARRAY flat n i0 .. i(n-1)    blocks of items, each item the n nodes (an array's 1 item, a map's key
 *                                and value); flat: strings and numbers only (a sized block never matters)
 *   RECORD doc n f0 .. f(n-1) names make name   the fields in order; doc: a Document, counted against the
 *                                caps; names: the object index of the field names' tuple; make: the object
 *                                index of a callable the reader calls with the field values in order (a
 *                                dataclass), or -1 for a dict; name: the object index of the record's name
 *   CUT inner                    a field whose non-null value's byte range the walk reports
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* -- the reader ------------------------------------------------------------------------------------ */

/* The reader recurses once per record or array: at most this deep, whatever Python's recursion limit says
 * (about 256 bytes of C stack a level: 0.5 MiB at most, where a thread's default stack is 8 MiB). Documents
 * capped at max_document_depth (32 by default) nest about 100 levels; a cap raised past ~1,000 Documents
 * meets this first, and the record is refused with a RecursionError. */
#define MAX_NESTING 2000

typedef struct {
    const uint8_t *data;
    Py_ssize_t end, pos;
    const int32_t *prog;
    PyObject *objects;  /* a tuple */
    int nesting;        /* records and arrays the reader is inside of */
} Reader;

static PyObject *truncated(void) {
    PyErr_SetString(PyExc_ValueError, "truncated (the walk accepted it: a walk and reader disagreement)");
    return NULL;
}

/* A zigzag varint as fastavro reads it (into 64 bits); -1 with an error set if it runs out or over 10 bytes. */
static int read_int64(Reader *r, int64_t *out) {
    uint64_t value = 0;
    for (int shift = 0; shift <= 63; shift += 7) {
        if (r->pos >= r->end) return -1;
        uint8_t byte = r->data[r->pos++];
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = (int64_t)((value >> 1) ^ -(value & 1));
            return 0;
        }
    }
    return -1;
}

static PyObject *read_node(Reader *r, int32_t node);

static PyObject *read_len(Reader *r, int as_bytes) {
    int64_t length;
    if (read_int64(r, &length) || length < 0 || length > r->end - r->pos) return truncated();
    const char *start = (const char *)r->data + r->pos;
    r->pos += (Py_ssize_t)length;
    if (as_bytes) return PyBytes_FromStringAndSize(start, (Py_ssize_t)length);
    return PyUnicode_DecodeUTF8(start, (Py_ssize_t)length, "strict");
}

static PyObject *read_fixed_size(Reader *r, int32_t size, int32_t what) {
    if (size > r->end - r->pos) return truncated();
    const uint8_t *at = r->data + r->pos;
    r->pos += size;
    switch (what) {
    case 0:
        Py_RETURN_NONE;
    case 1:
        return PyBool_FromLong(at[0] != 0);
    case 2: {
        union { uint32_t n; float f; } bits = {.n = (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16
                                                       | (uint32_t)at[3] << 24};
        return PyFloat_FromDouble(bits.f);
    }
    case 3: {
        union { uint64_t n; double d; } bits = {.n = 0};
        for (int i = 7; i >= 0; i--) bits.n = bits.n << 8 | at[i];
        return PyFloat_FromDouble(bits.d);
    }
    default:
        return PyBytes_FromStringAndSize((const char *)at, size);
    }
}

/* A record made by its constructor, called with the field values in order (a dataclass, a function). */
static PyObject *make_record(Reader *r, const int32_t *p, PyObject *make) {
    int32_t fields = p[2];
    PyObject **values = PyMem_Malloc((size_t)(fields ? fields : 1) * sizeof(PyObject *));  /* not on the stack:
                                                                       it would grow every level of recursion */
    if (values == NULL) return PyErr_NoMemory();
    int32_t read = 0;
    while (read < fields && (values[read] = read_node(r, p[3 + read])) != NULL) read++;
    PyObject *record = read == fields ? PyObject_Vectorcall(make, values, (size_t)fields, NULL) : NULL;
    for (int32_t i = 0; i < read; i++) Py_DECREF(values[i]);
    PyMem_Free(values);
    return record;
}

static PyObject *read_record(Reader *r, const int32_t *p) {
    int32_t fields = p[2];
    if (p[4 + fields] >= 0) return make_record(r, p, PyTuple_GET_ITEM(r->objects, p[4 + fields]));
    PyObject *names = PyTuple_GET_ITEM(r->objects, p[3 + fields]);
    PyObject *record = PyDict_New();
    if (record == NULL) return NULL;
    for (int32_t i = 0; i < fields; i++) {
        PyObject *value = read_node(r, p[3 + i]);
        if (value == NULL || PyDict_SetItem(record, PyTuple_GET_ITEM(names, i), value)) {
            Py_XDECREF(value);
            Py_DECREF(record);
            return NULL;
        }
        Py_DECREF(value);
    }
    return record;
}

/* An array (a list) or a map (a dict, later keys winning), block by block. */
static PyObject *read_blocks(Reader *r, const int32_t *p) {
    int is_map = p[2] == 2;
    PyObject *items = is_map ? PyDict_New() : PyList_New(0);
    if (items == NULL) return NULL;
    for (;;) {
        int64_t count, size;
        if (read_int64(r, &count)) goto ran_out;
        if (count == 0) return items;
        if (count < 0) {  /* the block's size in bytes follows; unused */
            if (count == INT64_MIN) goto ran_out;  /* no positive count (the walk refuses it first) */
            count = -count;
            if (read_int64(r, &size)) goto ran_out;
        }
        for (int64_t i = 0; i < count; i++) {
            PyObject *first = read_node(r, p[3]);
            if (first == NULL) goto failed;
            if (!is_map) {
                int appended = PyList_Append(items, first);
                Py_DECREF(first);
                if (appended) goto failed;
                continue;
            }
            PyObject *value = read_node(r, p[4]);
            int stored = value == NULL ? -1 : PyDict_SetItem(items, first, value);
            Py_DECREF(first);
            Py_XDECREF(value);
            if (stored) goto failed;
        }
    }
ran_out:
    truncated();
failed:
    Py_DECREF(items);
    return NULL;
}

static PyObject *read_node(Reader *r, int32_t node) {
    int64_t index;
    for (;;) {
        const int32_t *p = r->prog + node;
        switch (p[0]) {
        case K_LEN:
            return read_len(r, p[1]);
        case K_VARINT:
            if (read_int64(r, &index)) return truncated();
            return PyLong_FromLongLong(index);
        case K_SKIP:
            return read_fixed_size(r, p[1], p[2]);
        case K_UNION:
            if (read_int64(r, &index) || index < 0 || index >= p[1]) return truncated();
            node = p[2 + index];
            continue;
        case K_ENUM: {
            PyObject *symbols = PyTuple_GET_ITEM(r->objects, p[2]);
            if (read_int64(r, &index) || index < 0 || index >= PyTuple_GET_SIZE(symbols)) return truncated();
            return Py_NewRef(PyTuple_GET_ITEM(symbols, index));
        }
        case K_CUT:
            node = p[1];
            continue;
        case K_RECORD:
        case K_ARRAY: {
            if (r->nesting >= MAX_NESTING) {
                PyErr_Format(PyExc_RecursionError, "an Avro record nested over %d records and arrays deep", MAX_NESTING);
                return NULL;
            }
            if (Py_EnterRecursiveCall(" while reading an Avro record")) return NULL;
            r->nesting++;
            PyObject *value = p[0] == K_RECORD ? read_record(r, p) : read_blocks(r, p);
            r->nesting--;
            Py_LeaveRecursiveCall();
            return value;
        }
        default:
            PyErr_Format(PyExc_SystemError, "Avro program: unknown node kind %d", p[0]);
            return NULL;
        }
    }
}

PyDoc_STRVAR(read_doc,
"read(data, program, root, objects) -> value\n\n"
"The value fastavro.schemaless_reader reads from a record the walk accepted: dicts for records and maps,\n"
"lists for arrays, a union's branch value; a record whose program names a constructor is what that\n"
"returns, called with the field values in order. Raises ValueError if the record ends early or has bytes\n"
"left, UnicodeDecodeError for a string that is not UTF-8, and what a constructor raises.");

static PyObject *avro_read(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer data, program;
    Py_ssize_t root;
    PyObject *objects;
    if (!PyArg_ParseTuple(args, "y*y*nO!", &data, &program, &root, &PyTuple_Type, &objects)) return NULL;
    PyObject *value = NULL;
    Reader r = {.data = data.buf, .end = data.len, .pos = 0, .prog = program.buf, .objects = objects};
    if (root < 0 || root >= program.len / (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "root is outside the program");
    } else {
        value = read_node(&r, (int32_t)root);
        if (value != NULL && r.pos != r.end) {
            Py_CLEAR(value);
            PyErr_Format(PyExc_ValueError, "%zd bytes left after reading", r.end - r.pos);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&program);
    return value;
}

/* -- the walk's entry ---------------------------------------------------------------------------------- */

PyDoc_STRVAR(walk_doc,
"walk(data, program, root, max_depth, max_documents, cuts) -> (end, sized) | None\n\n"
"The pre-scan of one record: None if it is refused (prescan.py walks it again to say why), else the\n"
"position after the root's value and whether a block of records was written with its size in bytes.\n"
"cuts: a list the byte ranges of CUT fields are appended to, or None.");

static PyObject *avro_walk(PyObject *Py_UNUSED(module), PyObject *args) {
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

/* -- the writer ----------------------------------------------------------------------------------------- */

/* What fastavro.schemaless_writer writes, for the values it would write the same way without a choice to
 * make: exact str, bytes, int, float, bool, None, dict and list, a union's branch found as fastavro finds it
 * (None: the null branch; a (name, value) tuple: the record branch of that name; the only non-null branch;
 * or a scalar whose type the earlier branches refuse), every array and map in one block. Anything else (a
 * subclass, a tuple for an array, a missing field that would take its default, an int written as a double,
 * a float branch before a double one, a record dict with a key that is not an exact str or is "-type") is not
 * written here: write() returns None and the caller hands the
 * value to fastavro, which writes it or raises its own error. So a record is written the same bytes either
 * way, and no value is refused here that fastavro would take. */

typedef struct {
    char *buf;
    Py_ssize_t len, capacity;
    const int32_t *prog;
    PyObject *objects;
    int nesting;
} Writer;

static int reserve(Writer *w, Py_ssize_t more) {
    if (w->len + more <= w->capacity) return 0;
    Py_ssize_t capacity = w->capacity * 2 > w->len + more ? w->capacity * 2 : w->len + more;
    char *grown = PyMem_Realloc(w->buf, (size_t)capacity);
    if (grown == NULL) return -1;
    w->buf = grown;
    w->capacity = capacity;
    return 0;
}

static int write_long(Writer *w, int64_t value) {
    if (reserve(w, 10)) return -1;
    uint64_t n = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (n & ~(uint64_t)0x7F) {
        w->buf[w->len++] = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    w->buf[w->len++] = (char)n;
    return 0;
}

static int write_raw(Writer *w, const char *data, Py_ssize_t size) {
    if (write_long(w, size) || reserve(w, size)) return -1;
    memcpy(w->buf + w->len, data, (size_t)size);
    w->len += size;
    return 0;
}

static int write_string(Writer *w, PyObject *value) {
    Py_ssize_t size;
    const char *utf8 = PyUnicode_CheckExact(value) ? PyUnicode_AsUTF8AndSize(value, &size) : NULL;
    return utf8 == NULL ? -1 : write_raw(w, utf8, size);
}

static int write_fixed(Writer *w, PyObject *value, int32_t what) {
    switch (what) {
    case 0:
        return value == Py_None ? 0 : -1;
    case 1:
        if (value != Py_True && value != Py_False) return -1;
        if (reserve(w, 1)) return -1;
        w->buf[w->len++] = (char)(value == Py_True);
        return 0;
    case 2: {
        if (!PyFloat_CheckExact(value)) return -1;
        double d = PyFloat_AS_DOUBLE(value);
        union { float f; uint32_t n; } bits = {.f = (float)d};
        if (isfinite(d) && !isfinite(bits.f)) return -1;  /* struct.pack('<f') raises OverflowError */
        if (reserve(w, 4)) return -1;
        for (int i = 0; i < 4; i++) w->buf[w->len++] = (char)(bits.n >> (8 * i));
        return 0;
    }
    case 3: {
        if (!PyFloat_CheckExact(value)) return -1;
        union { double d; uint64_t n; } bits = {.d = PyFloat_AS_DOUBLE(value)};
        if (reserve(w, 8)) return -1;
        for (int i = 0; i < 8; i++) w->buf[w->len++] = (char)(bits.n >> (8 * i));
        return 0;
    }
    default:
        return -1;  /* fixed: fastavro's */
    }
}

static const int32_t *skip_cut(const Writer *w, int32_t node) {
    const int32_t *p = w->prog + node;
    return p[0] == K_CUT ? w->prog + p[1] : p;
}

/* Scalars of these exact types are judged by branch_takes; anything else is left to fastavro. */
static int known_scalar(PyObject *value) {
    return value == Py_None || PyBool_Check(value) || PyLong_CheckExact(value) || PyFloat_CheckExact(value)
           || PyUnicode_CheckExact(value) || PyBytes_CheckExact(value);
}

/* Whether fastavro's validation takes this value for the branch: 1 takes, 0 refuses, -1 cannot say here (a
 * named or container branch, a float branch, fastavro taking an int or a bool for a double, an int past the
 * branch's range, a value of another type). */
static int branch_takes(const int32_t *branch, PyObject *value) {
    if (branch[0] == K_SKIP && branch[2] == 0) return value == Py_None;
    if (!known_scalar(value)) return -1;
    int number = PyBool_Check(value) || PyLong_CheckExact(value);
    switch (branch[0]) {
    case K_SKIP:
        if (branch[2] == 1) return PyBool_Check(value);
        if (branch[2] == 2) return number || PyFloat_CheckExact(value) ? -1 : 0;
        if (branch[2] == 3) return PyFloat_CheckExact(value) ? 1 : number ? -1 : 0;
        return PyBytes_CheckExact(value) ? -1 : 0;  /* fixed: fastavro checks the size */
    case K_LEN:
        return branch[1] ? PyBytes_CheckExact(value) : PyUnicode_CheckExact(value);
    case K_VARINT: {
        if (PyBool_Check(value)) return 0;  /* fastavro: "and not isinstance(datum, bool)" */
        if (!PyLong_CheckExact(value)) return 0;
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (n == -1 && PyErr_Occurred())) return -1;
        return branch[1] || (n >= INT32_MIN && n <= INT32_MAX) ? 1 : -1;
    }
    default:
        return -1;
    }
}

/* The type name a primitive branch goes by in fastavro's (name, value) notation; NULL for the others. */
static const char *primitive_name(const int32_t *branch) {
    static const char *const fixed_size[] = {"null", "boolean", "float", "double"};
    switch (branch[0]) {
    case K_LEN:
        return branch[1] ? "bytes" : "string";
    case K_VARINT:
        return branch[1] ? "long" : "int";
    case K_SKIP:
        return branch[2] >= 0 && branch[2] <= 3 ? fixed_size[branch[2]] : NULL;
    default:
        return NULL;
    }
}

static int write_node(Writer *w, int32_t node, PyObject *value);

static int write_union(Writer *w, const int32_t *p, PyObject *value) {
    int32_t n = p[1];
    if (PyTuple_CheckExact(value)) {  /* fastavro's (name, value) notation: the first branch of that name */
        if (PyTuple_GET_SIZE(value) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(value, 0))) return -1;
        PyObject *name = PyTuple_GET_ITEM(value, 0);
        for (int32_t i = 0; i < n; i++) {
            const int32_t *branch = skip_cut(w, p[2 + i]);
            const char *primitive = primitive_name(branch);
            int same;
            if (primitive != NULL) {
                same = PyUnicode_CompareWithASCIIString(name, primitive) == 0;
            } else if (branch[0] == K_RECORD) {
                same = PyUnicode_Compare(name, PyTuple_GET_ITEM(w->objects, branch[5 + branch[2]])) == 0;
            } else {
                return -1;  /* an enum's or a fixed's name, or an unnamed array or map: fastavro's */
            }
            if (PyErr_Occurred()) return -1;
            if (same) return write_long(w, i) || write_node(w, p[2 + i], PyTuple_GET_ITEM(value, 1));
        }
        return -1;
    }
    int32_t others = 0, other = -1;
    for (int32_t i = 0; i < n; i++) {
        const int32_t *branch = skip_cut(w, p[2 + i]);
        if (branch[0] == K_SKIP && branch[2] == 0) {
            if (value == Py_None) return write_long(w, i);
        } else {
            others++;
            other = i;
        }
    }
    if (value == Py_None) return -1;
    if (others == 1 && !PyTuple_Check(value)) return write_long(w, other) || write_node(w, p[2 + other], value);
    for (int32_t i = 0; i < n; i++) {
        int takes = branch_takes(skip_cut(w, p[2 + i]), value);
        if (takes < 0) return -1;
        if (takes) return write_long(w, i) || write_node(w, p[2 + i], value);
    }
    return -1;
}

static PyObject *type_key;  /* "-type": fastavro's validation refuses a record whose "-type" is not its name */

/* A record's dict is written only when every key is an exact str (so that looking a field up runs no Python
 * code, which could free what is being written) and none is "-type" (fastavro's validation, in a union, would
 * compare it with the record's name). */
static int plain_record(PyObject *value) {
    Py_ssize_t at = 0;
    PyObject *key, *item;
    while (PyDict_Next(value, &at, &key, &item))
        if (!PyUnicode_CheckExact(key)) return 0;
    return PyDict_GetItemWithError(value, type_key) == NULL && !PyErr_Occurred();
}

/* Write a value borrowed from a container, holding it meanwhile. */
static int write_held(Writer *w, int32_t node, PyObject *value) {
    Py_INCREF(value);
    int failed = write_node(w, node, value);
    Py_DECREF(value);
    return failed;
}

static int write_record(Writer *w, const int32_t *p, PyObject *value) {
    if (!PyDict_CheckExact(value) || !plain_record(value)) return -1;
    int32_t fields = p[2];
    PyObject *names = PyTuple_GET_ITEM(w->objects, p[3 + fields]);
    for (int32_t i = 0; i < fields; i++) {
        PyObject *field = PyDict_GetItemWithError(value, PyTuple_GET_ITEM(names, i));
        if (field == NULL || write_held(w, p[3 + i], field)) return -1;  /* missing: its default is fastavro's */
    }
    return 0;
}

static int write_blocks(Writer *w, const int32_t *p, PyObject *value) {
    if (p[2] == 1) {
        if (!PyList_CheckExact(value)) return -1;
        Py_ssize_t count = PyList_GET_SIZE(value);
        if (count && write_long(w, count)) return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i++)
            if (write_held(w, p[3], PyList_GET_ITEM(value, i))) return -1;
        return PyList_GET_SIZE(value) == count ? write_long(w, 0) : -1;  /* a list that changed meanwhile */
    }
    if (!PyDict_CheckExact(value)) return -1;
    Py_ssize_t count = PyDict_GET_SIZE(value), at = 0;
    PyObject *key, *item;
    if (count && write_long(w, count)) return -1;
    while (PyDict_Next(value, &at, &key, &item))
        if (write_string(w, key) || write_held(w, p[4], item)) return -1;
    return PyDict_GET_SIZE(value) == count ? write_long(w, 0) : -1;
}

static int write_node(Writer *w, int32_t node, PyObject *value) {
    const int32_t *p = skip_cut(w, node);
    switch (p[0]) {
    case K_LEN:
        if (p[1]) return PyBytes_CheckExact(value) ? write_raw(w, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)) : -1;
        return write_string(w, value);
    case K_VARINT: {
        if (!PyLong_CheckExact(value)) return -1;
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (n == -1 && PyErr_Occurred()) || (!p[1] && (n < INT32_MIN || n > INT32_MAX))) return -1;
        return write_long(w, n);
    }
    case K_SKIP:
        return write_fixed(w, value, p[2]);
    case K_UNION:
        return write_union(w, p, value);
    case K_ENUM: {
        PyObject *symbols = PyTuple_GET_ITEM(w->objects, p[2]);
        if (!PyUnicode_CheckExact(value)) return -1;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(symbols); i++) {
            int same = PyUnicode_Compare(value, PyTuple_GET_ITEM(symbols, i));
            if (same == -1 && PyErr_Occurred()) return -1;
            if (same == 0) return write_long(w, i);
        }
        return -1;
    }
    case K_RECORD:
    case K_ARRAY: {
        if (w->nesting >= MAX_NESTING || Py_EnterRecursiveCall(" while writing an Avro record")) return -1;
        w->nesting++;
        int failed = p[0] == K_RECORD ? write_record(w, p, value) : write_blocks(w, p, value);
        w->nesting--;
        Py_LeaveRecursiveCall();
        return failed;
    }
    default:
        return -1;
    }
}

PyDoc_STRVAR(write_doc,
"write(value, program, root, objects) -> bytes | None\n\n"
"What fastavro.schemaless_writer writes for value, or None where this writer leaves the value to fastavro\n"
"(see the writer's comment in _avro.c): the caller then writes it with fastavro, which may raise.");

static PyObject *avro_write(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *value, *objects;
    Py_buffer program;
    Py_ssize_t root;
    if (!PyArg_ParseTuple(args, "Oy*nO!", &value, &program, &root, &PyTuple_Type, &objects)) return NULL;
    PyObject *result = NULL;
    Writer w = {.buf = PyMem_Malloc(256), .capacity = 256, .prog = program.buf, .objects = objects};
    if (w.buf == NULL) {
        PyErr_NoMemory();
    } else if (root < 0 || root >= program.len / (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "root is outside the program");
    } else if (write_node(&w, (int32_t)root, value)) {
        PyErr_Clear();  /* fastavro writes it, or says what is wrong with it */
        result = Py_NewRef(Py_None);
    } else {
        result = PyBytes_FromStringAndSize(w.buf, w.len);
    }
    PyMem_Free(w.buf);
    PyBuffer_Release(&program);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", avro_walk, METH_VARARGS, walk_doc},
    {"read", avro_read, METH_VARARGS, read_doc},
    {"write", avro_write, METH_VARARGS, write_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_avro",
    .m_doc = "Bounded Avro binary, compiled: the pre-scan's walk, a reader and a writer (streams/wire/program.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__avro(void) {
    if (type_key == NULL && (type_key = PyUnicode_InternFromString("-type")) == NULL) return NULL;
    return PyModule_Create(&module);
}
