/* The media worker's data path: every RTP and RTCP packet of every leg, in C.

   A packet through a uvloop datagram transport costs ~20 us of Python (the bytes and address
   objects, the protocol call, the header rewrite, the transport's send); the kernel's floor for
   one receive and one send here is ~11-15 us. So the worker's event loop only watches each leg's
   sockets (add_reader) and calls Leg.read_rtp / Leg.read_rtcp, which take every waiting datagram
   in one recvmmsg, check where it came from, rewrite its header and send it on, all without a
   Python object per packet. Python keeps everything that is not per packet: commands, the
   player's clock, recordings (the audio a recorded leg sends is kept here as (time, encoding,
   payload) until the worker takes it), digits (reported through a handler, a few per call).

   One thread, the worker's, always holding the GIL: no locks. The rules mirror what the Python
   relay did (services/media/legs.py documents them): symmetric RTP (RFC 4961), payload types
   translated by encoding, PCMU<->PCMA transcoded when the legs share no law, one outbound stream
   per leg with its own SSRC and a sequence and timestamp that go on across a change of source
   (RFC 3550 section 5.1), the marker bit on the first packet after the change.

   A leg toward another server's media service may be SRTP (RFC 3711, AES_CM_128_HMAC_SHA1_80,
   keys exchanged in SDES lines inside the TLS trunk, RFC 4568): what it receives is checked and
   decrypted (a packet that fails is dropped and counted) before anything else reads it, what it
   sends is encrypted last, so relaying, transcoding and recording see plain audio. libsrtp does
   the cryptography (the reference implementation, also under Asterisk, FreeSWITCH and Janus). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include <srtp2/srtp.h>

#define BATCH 16        /* datagrams taken per recvmmsg */
#define ROUNDS 8        /* recvmmsg calls per wake-up at most: the other legs wait meanwhile */
#define MAX_DATAGRAM 2048
#define ENCODINGS 128   /* encoding ids, given by Python: 0 PCMU, 1 PCMA, 2 telephone-event */
#define PCMU 0
#define PCMA 1
#define TELEPHONE_EVENT 2
#define CLOCK_RATE 8000
#define SRTP_KEY 30  /* master key (16) and salt (14) of AES_CM_128_HMAC_SHA1_80 */

static const char DTMF_KEYS[] = "0123456789*#ABCD";

/* The worker's totals, read by Python once a second. */
static unsigned long long packets_in, packets_relayed, packets_dropped;
static unsigned char transcode[2][256]; /* [from PCMU or PCMA][code]: the other law's code */
static PyObject *digit_handler;         /* handler(leg_id, key, duration_ms) */

typedef struct LegObject {
    PyObject_HEAD
    PyObject *leg_id;
    int rtp_fd, rtcp_fd; /* owned by the Python sockets; -1 once closed */
    int family;
    struct sockaddr_storage remote_rtp, remote_rtcp;
    socklen_t remote_len; /* 0: no remote yet */
    int party_sends, party_receives;
    signed char encoding_of[128]; /* payload type -> encoding id; -1 not offered */
    short payload_type_of[ENCODINGS]; /* encoding id -> payload type; -1 not offered */
    int clock_rate_of[128];
    struct LegObject *partner;
    int playing;   /* the player feeds it: the partner's packets are not sent to it */
    int tapping;   /* keep what it sends, for a recording */
    PyObject *taps; /* list of (wall time, encoding, payload) */
    /* The outbound stream. */
    uint32_t ssrc;
    PyObject *source;
    long long source_ssrc;
    uint16_t seq_offset, last_sequence;
    uint32_t ts_offset, last_timestamp;
    double last_sent;
    int started;
    /* Counters and times. */
    unsigned long long sent, received, dropped;
    double last_rtp;
    long long digit_ssrc, digit_timestamp;
    srtp_t send_srtp, recv_srtp; /* NULL: plain RTP */
} LegObject;

static double clock_now(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int same_address(const struct sockaddr_storage *a, socklen_t a_len, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6 && a_len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return 0;
}

static uint32_t random32(void) {
    uint32_t value = 0;
    if (getrandom(&value, sizeof value, 0) != sizeof value)
        value = (uint32_t)time(NULL) ^ (uint32_t)(uintptr_t)&value;
    return value;
}

/* Writes the 12-byte header of one packet from `source` (its stream `source_ssrc`) into `out`. */
static void stream_header(LegObject *self, PyObject *source, long long source_ssrc, int payload_type, int marker,
                          uint16_t sequence, uint32_t timestamp, double now, unsigned char *out) {
    if (source != self->source || source_ssrc != self->source_ssrc) {
        uint32_t advance = 0;
        if (self->started) {
            double ticks = round((now - self->last_sent) * CLOCK_RATE);
            advance = ticks < 1 ? 1 : (uint32_t)ticks;
        } else {
            self->started = 1;
        }
        self->seq_offset = (uint16_t)(self->last_sequence + 1 - sequence);
        self->ts_offset = self->last_timestamp + advance - timestamp;
        Py_XINCREF(source);
        Py_XSETREF(self->source, source);
        self->source_ssrc = source_ssrc;
        marker = 1;
    }
    uint16_t seq = (uint16_t)(sequence + self->seq_offset);
    uint32_t ts = timestamp + self->ts_offset;
    self->last_sequence = seq;
    self->last_timestamp = ts;
    self->last_sent = now;
    out[0] = 0x80;
    out[1] = (unsigned char)(payload_type | (marker ? 0x80 : 0));
    out[2] = seq >> 8, out[3] = seq & 0xFF;
    out[4] = ts >> 24, out[5] = (ts >> 16) & 0xFF, out[6] = (ts >> 8) & 0xFF, out[7] = ts & 0xFF;
    uint32_t ssrc = self->ssrc;
    out[8] = ssrc >> 24, out[9] = (ssrc >> 16) & 0xFF, out[10] = (ssrc >> 8) & 0xFF, out[11] = ssrc & 0xFF;
}

static int keep_tap(LegObject *self, int encoding, const unsigned char *payload, Py_ssize_t size, double wall);

/* Sends one packet of `source` to this leg's party in a payload type it offered, transcoding
   between the laws if needed, and keeps its audio for the recording while tapping (before SRTP
   encrypts it in place). Returns the encoding sent, -1 if nothing was sent, -2 on a Python error
   (a tap that could not be kept). `packet` has room for the SRTP trailer. */
static int leg_send(LegObject *self, PyObject *source, long long source_ssrc, int encoding, int marker,
                    uint16_t sequence, uint32_t timestamp, const unsigned char *payload, Py_ssize_t size, double now,
                    double wall, unsigned char *packet) {
    if (self->rtp_fd < 0 || self->remote_len == 0 || !self->party_receives)
        return -1;
    if (encoding < 0 || encoding >= ENCODINGS || size > MAX_DATAGRAM - 12)
        return -1;
    int payload_type = self->payload_type_of[encoding];
    unsigned char *body = packet + 12;
    if (payload_type < 0) {
        if (encoding != PCMU && encoding != PCMA)
            return -1; /* a telephone-event (or another codec) the party did not offer */
        int other = encoding == PCMU ? PCMA : PCMU;
        payload_type = self->payload_type_of[other];
        if (payload_type < 0)
            return -1;
        const unsigned char *table = transcode[encoding];
        for (Py_ssize_t i = 0; i < size; i++)
            body[i] = table[payload[i]];
        encoding = other;
    } else {
        memcpy(body, payload, (size_t)size);
    }
    stream_header(self, source, source_ssrc, payload_type, marker, sequence, timestamp, now, packet);
    if (self->tapping && encoding != TELEPHONE_EVENT && keep_tap(self, encoding, body, size, wall) < 0)
        return -2;
    int length = (int)(12 + size);
    if (self->send_srtp != NULL && srtp_protect(self->send_srtp, packet, &length) != srtp_err_status_ok)
        return -1;
    /* EAGAIN (a full socket buffer) or an ICMP error from a party gone: the packet is lost, as it
       would be on the network; the next one tries again. */
    (void)sendto(self->rtp_fd, packet, (size_t)length, MSG_DONTWAIT, (struct sockaddr *)&self->remote_rtp,
                 self->remote_len);
    self->sent++;
    return encoding;
}

static int keep_tap(LegObject *self, int encoding, const unsigned char *payload, Py_ssize_t size, double wall) {
    PyObject *tap = Py_BuildValue("(diy#)", wall, encoding, (const char *)payload, size);
    if (tap == NULL)
        return -1;
    int failed = PyList_Append(self->taps, tap);
    Py_DECREF(tap);
    return failed;
}

static void report_digit(LegObject *self, int payload_type, uint32_t ssrc, uint32_t timestamp,
                         const unsigned char *payload, Py_ssize_t size) {
    if (size < 4 || !(payload[1] & 0x80) || payload[0] >= 16)
        return; /* not the end of a key */
    if (self->digit_ssrc == ssrc && self->digit_timestamp == timestamp)
        return; /* the end packet is sent three times (RFC 4733 section 2.5.1.4) */
    self->digit_ssrc = ssrc;
    self->digit_timestamp = timestamp;
    if (digit_handler == NULL)
        return;
    int clock = self->clock_rate_of[payload_type] > 0 ? self->clock_rate_of[payload_type] : CLOCK_RATE;
    long duration_ms = (long)((payload[2] << 8) | payload[3]) * 1000 / clock;
    PyObject *result = PyObject_CallFunction(digit_handler, "Os#l", self->leg_id, &DTMF_KEYS[payload[0]],
                                             (Py_ssize_t)1, duration_ms);
    if (result == NULL)
        PyErr_WriteUnraisable(digit_handler);
    Py_XDECREF(result);
}

/* One datagram from this leg's RTP socket. Returns -1 on a Python error. */
static int on_rtp(LegObject *self, unsigned char *data, Py_ssize_t size, const struct sockaddr_storage *from,
                  socklen_t from_len, double now, double wall, unsigned char *packet) {
    if (self->remote_len == 0 || !same_address(from, from_len, &self->remote_rtp)) {
        self->dropped++;
        packets_dropped++;
        return 0;
    }
    if (self->recv_srtp != NULL) {
        int length = (int)size;
        if (srtp_unprotect(self->recv_srtp, data, &length) != srtp_err_status_ok) {
            self->dropped++; /* not from the key holder, replayed, or corrupt */
            packets_dropped++;
            return 0;
        }
        size = length;
    }
    self->received++;
    packets_in++;
    self->last_rtp = now;
    if (size < 12 || data[0] >> 6 != 2)
        return 0;
    int payload_type = data[1] & 0x7F;
    int encoding = self->encoding_of[payload_type];
    if (encoding < 0 || !self->party_sends)
        return 0;
    Py_ssize_t start = 12 + 4 * (data[0] & 0x0F), end = size;
    if (data[0] & 0x10) { /* a header extension: its length in 32-bit words follows its profile */
        if (size < start + 4)
            return 0;
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3]);
    }
    if ((data[0] & 0x20) && end > start)
        end -= data[size - 1];
    if (end < start)
        return 0;
    uint16_t sequence = (uint16_t)((data[2] << 8) | data[3]);
    uint32_t timestamp = ((uint32_t)data[4] << 24) | ((uint32_t)data[5] << 16) | ((uint32_t)data[6] << 8) | data[7];
    uint32_t ssrc = ((uint32_t)data[8] << 24) | ((uint32_t)data[9] << 16) | ((uint32_t)data[10] << 8) | data[11];
    if (encoding == TELEPHONE_EVENT)
        report_digit(self, payload_type, ssrc, timestamp, data + start, end - start);
    LegObject *out = self->partner;
    if (out == NULL || out->playing)
        return 0;
    int sent = leg_send(out, (PyObject *)self, ssrc, encoding, data[1] & 0x80, sequence, timestamp, data + start,
                        end - start, now, wall, packet);
    if (sent == -2)
        return -1;
    if (sent >= 0)
        packets_relayed++;
    return 0;
}

/* Receive buffers, one set for the whole worker (one thread). */
static unsigned char buffers[BATCH][MAX_DATAGRAM];
static struct sockaddr_storage sources[BATCH];
static struct iovec vectors[BATCH];
static struct mmsghdr headers[BATCH];
static unsigned char outgoing[MAX_DATAGRAM + SRTP_MAX_TRAILER_LEN + 16];

static int receive_batch(int fd) {
    for (int i = 0; i < BATCH; i++) {
        vectors[i].iov_base = buffers[i];
        vectors[i].iov_len = MAX_DATAGRAM;
        memset(&headers[i].msg_hdr, 0, sizeof headers[i].msg_hdr);
        headers[i].msg_hdr.msg_iov = &vectors[i];
        headers[i].msg_hdr.msg_iovlen = 1;
        headers[i].msg_hdr.msg_name = &sources[i];
        headers[i].msg_hdr.msg_namelen = sizeof sources[i];
    }
    return recvmmsg(fd, headers, BATCH, MSG_DONTWAIT, NULL);
}

static PyObject *Leg_read_rtp(LegObject *self, PyObject *Py_UNUSED(ignored)) {
    for (int round_ = 0; round_ < ROUNDS && self->rtp_fd >= 0; round_++) {
        int count = receive_batch(self->rtp_fd);
        if (count <= 0)
            break; /* EAGAIN: all taken; an error (ICMP) is reported once and cleared */
        double now = clock_now(CLOCK_MONOTONIC), wall = clock_now(CLOCK_REALTIME);
        Py_INCREF(self); /* a digit handler may close the leg */
        int failed = 0;
        for (int i = 0; i < count && !failed && self->rtp_fd >= 0; i++) {
            if (headers[i].msg_hdr.msg_flags & MSG_TRUNC)
                continue;
            failed = on_rtp(self, buffers[i], (Py_ssize_t)headers[i].msg_len, &sources[i],
                            headers[i].msg_hdr.msg_namelen, now, wall, outgoing);
        }
        Py_DECREF(self);
        if (failed)
            return NULL;
        if (count < BATCH)
            break;
    }
    Py_RETURN_NONE;
}

static PyObject *Leg_read_rtcp(LegObject *self, PyObject *Py_UNUSED(ignored)) {
    for (int round_ = 0; round_ < ROUNDS && self->rtcp_fd >= 0; round_++) {
        int count = receive_batch(self->rtcp_fd);
        if (count <= 0)
            break;
        for (int i = 0; i < count; i++) {
            int length = (int)headers[i].msg_len;
            if (self->remote_len == 0 || !same_address(&sources[i], headers[i].msg_hdr.msg_namelen, &self->remote_rtcp) ||
                (self->recv_srtp != NULL && srtp_unprotect_rtcp(self->recv_srtp, buffers[i], &length) != srtp_err_status_ok)) {
                self->dropped++;
                packets_dropped++;
                continue;
            }
            LegObject *out = self->partner;
            if (out == NULL || out->rtcp_fd < 0 || out->remote_len == 0 || length > MAX_DATAGRAM)
                continue;
            memcpy(outgoing, buffers[i], (size_t)length);
            if (out->send_srtp != NULL && srtp_protect_rtcp(out->send_srtp, outgoing, &length) != srtp_err_status_ok)
                continue;
            (void)sendto(out->rtcp_fd, outgoing, (size_t)length, MSG_DONTWAIT, (struct sockaddr *)&out->remote_rtcp,
                         out->remote_len);
        }
        if (count < BATCH)
            break;
    }
    Py_RETURN_NONE;
}

static int parse_address(int family, const char *host, int port, struct sockaddr_storage *out, socklen_t *len) {
    memset(out, 0, sizeof *out);
    if (port < 0 || port > 65535)
        return -1;
    if (family == AF_INET) {
        struct sockaddr_in *v4 = (void *)out;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &v4->sin_addr) != 1)
            return -1;
        *len = sizeof *v4;
        return 0;
    }
    struct sockaddr_in6 *v6 = (void *)out;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) != 1) {
        struct in_addr v4;
        if (inet_pton(AF_INET, host, &v4) != 1)
            return -1;
        v6->sin6_addr.s6_addr[10] = v6->sin6_addr.s6_addr[11] = 0xFF; /* ::ffff:a.b.c.d */
        memcpy(&v6->sin6_addr.s6_addr[12], &v4, 4);
    }
    *len = sizeof *v6;
    return 0;
}

static int small_int_map(PyObject *mapping, const char *what, int key_limit, int value_limit, int *keys, int *values,
                         Py_ssize_t *count) {
    if (!PyDict_Check(mapping)) {
        PyErr_Format(PyExc_TypeError, "%s: a dict of ints", what);
        return -1;
    }
    PyObject *key, *value;
    Py_ssize_t position = 0;
    *count = 0;
    while (PyDict_Next(mapping, &position, &key, &value)) {
        long k = PyLong_AsLong(key), v = PyLong_AsLong(value);
        if (PyErr_Occurred())
            return -1;
        if (k < 0 || k >= key_limit || v < 0 || v >= value_limit) {
            PyErr_Format(PyExc_ValueError, "%s: %ld -> %ld out of range", what, k, v);
            return -1;
        }
        keys[*count] = (int)k;
        values[*count] = (int)v;
        (*count)++;
    }
    return 0;
}

/* set_remote(host, rtp_port, rtcp_port, {payload type: encoding}, {payload type: clock rate}, sends, receives) */
static PyObject *Leg_set_remote(LegObject *self, PyObject *args) {
    const char *host;
    int rtp_port, rtcp_port, sends, receives;
    PyObject *encodings, *clocks;
    if (!PyArg_ParseTuple(args, "siiO!O!pp", &host, &rtp_port, &rtcp_port, &PyDict_Type, &encodings, &PyDict_Type,
                          &clocks, &sends, &receives))
        return NULL;
    struct sockaddr_storage rtp, rtcp;
    socklen_t rtp_len, rtcp_len;
    if (parse_address(self->family, host, rtp_port, &rtp, &rtp_len) < 0 ||
        parse_address(self->family, host, rtcp_port, &rtcp, &rtcp_len) < 0) {
        PyErr_Format(PyExc_ValueError, "not an address for this leg: %s %d/%d", host, rtp_port, rtcp_port);
        return NULL;
    }
    int keys[128], values[128], clock_keys[128], clock_values[128];
    Py_ssize_t count, clock_count;
    if (PyDict_Size(encodings) > 128 || PyDict_Size(clocks) > 128) {
        PyErr_SetString(PyExc_ValueError, "more than 128 payload types");
        return NULL;
    }
    if (small_int_map(encodings, "encodings", 128, ENCODINGS, keys, values, &count) < 0 ||
        small_int_map(clocks, "clock rates", 128, 1 << 30, clock_keys, clock_values, &clock_count) < 0)
        return NULL;
    memset(self->encoding_of, -1, sizeof self->encoding_of);
    for (int i = 0; i < ENCODINGS; i++)
        self->payload_type_of[i] = -1;
    memset(self->clock_rate_of, 0, sizeof self->clock_rate_of);
    for (Py_ssize_t i = 0; i < count; i++) {
        self->encoding_of[keys[i]] = (signed char)values[i];
        /* The first payload type offered for an encoding is the one sent (dicts keep SDP order). */
        if (self->payload_type_of[values[i]] < 0)
            self->payload_type_of[values[i]] = (short)keys[i];
    }
    for (Py_ssize_t i = 0; i < clock_count; i++)
        self->clock_rate_of[clock_keys[i]] = clock_values[i];
    self->remote_rtp = rtp;
    self->remote_rtcp = rtcp;
    self->remote_len = rtp_len;
    self->party_sends = sends;
    self->party_receives = receives;
    Py_RETURN_NONE;
}

static PyTypeObject LegType;

static PyObject *Leg_connect(LegObject *self, PyObject *partner) {
    if (partner != Py_None && !PyObject_TypeCheck(partner, &LegType)) {
        PyErr_SetString(PyExc_TypeError, "connect: a Leg or None");
        return NULL;
    }
    Py_XSETREF(self->partner, partner == Py_None ? NULL : (LegObject *)Py_NewRef(partner));
    Py_RETURN_NONE;
}

/* send(source, source_ssrc, encoding, marker, sequence, timestamp, payload) -> encoding | None:
   one packet from a source other than the partner (the player), kept for the recording like the
   partner's while tapping (one list in order, whichever the source). */
static PyObject *Leg_send(LegObject *self, PyObject *args) {
    PyObject *source;
    long long source_ssrc;
    int encoding, marker;
    unsigned int sequence;
    unsigned long timestamp;
    Py_buffer payload;
    if (!PyArg_ParseTuple(args, "OLiiIky*", &source, &source_ssrc, &encoding, &marker, &sequence, &timestamp,
                          &payload))
        return NULL;
    int sent = leg_send(self, source, source_ssrc, encoding, marker, (uint16_t)sequence, (uint32_t)timestamp,
                        payload.buf, payload.len, clock_now(CLOCK_MONOTONIC), clock_now(CLOCK_REALTIME), outgoing);
    PyObject *result = NULL;
    if (sent == -1)
        result = Py_NewRef(Py_None);
    else if (sent >= 0)
        result = PyLong_FromLong(sent);
    PyBuffer_Release(&payload);
    return result;
}

static void drop_srtp(LegObject *self) {
    if (self->send_srtp != NULL)
        srtp_dealloc(self->send_srtp);
    if (self->recv_srtp != NULL)
        srtp_dealloc(self->recv_srtp);
    self->send_srtp = self->recv_srtp = NULL;
}

static srtp_t srtp_session(const unsigned char *key, int inbound) {
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtp);
    srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtcp);
    policy.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    policy.key = (unsigned char *)key; /* libsrtp derives its session keys from it at once */
    policy.window_size = 1024;
    srtp_t session = NULL;
    return srtp_create(&session, &policy) == srtp_err_status_ok ? session : NULL;
}

/* set_srtp(send_key, recv_key): SRTP with these 30-byte master keys (b"" and b"": plain RTP). */
static PyObject *Leg_set_srtp(LegObject *self, PyObject *args) {
    Py_buffer send_key, recv_key;
    if (!PyArg_ParseTuple(args, "y*y*", &send_key, &recv_key))
        return NULL;
    int plain = send_key.len == 0 && recv_key.len == 0;
    int sized = send_key.len == SRTP_KEY && recv_key.len == SRTP_KEY;
    PyObject *result = NULL;
    if (!plain && !sized) {
        PyErr_SetString(PyExc_ValueError, "set_srtp: two keys of 30 bytes, or none");
    } else {
        drop_srtp(self);
        if (sized) {
            self->send_srtp = srtp_session(send_key.buf, 0);
            self->recv_srtp = srtp_session(recv_key.buf, 1);
        }
        if (sized && (self->send_srtp == NULL || self->recv_srtp == NULL)) {
            drop_srtp(self);
            PyErr_SetString(PyExc_RuntimeError, "set_srtp: libsrtp refused the session");
        } else {
            result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&send_key);
    PyBuffer_Release(&recv_key);
    return result;
}

static PyObject *Leg_get_srtp(LegObject *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->send_srtp != NULL);
}

static PyObject *Leg_take_taps(LegObject *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *taken = self->taps, *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    self->taps = fresh;
    return taken;
}

static PyObject *Leg_stream_state(LegObject *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{s:k,s:I,s:k,s:d,s:O}", "ssrc", (unsigned long)self->ssrc, "sequence",
                         (unsigned int)self->last_sequence, "timestamp", (unsigned long)self->last_timestamp, "sent",
                         self->last_sent, "started", self->started ? Py_True : Py_False);
}

/* resume_stream(ssrc, sequence, timestamp, sent, started): a moved leg's stream goes on; its next
   packet counts as a new source (the monotonic clock is the machine's, shared by the workers). */
static PyObject *Leg_resume_stream(LegObject *self, PyObject *args) {
    unsigned long ssrc, timestamp;
    unsigned int sequence;
    double sent;
    int started;
    if (!PyArg_ParseTuple(args, "kIkdp", &ssrc, &sequence, &timestamp, &sent, &started))
        return NULL;
    self->ssrc = (uint32_t)ssrc;
    self->last_sequence = (uint16_t)sequence;
    self->last_timestamp = (uint32_t)timestamp;
    self->last_sent = sent;
    self->started = started;
    Py_CLEAR(self->source);
    self->source_ssrc = -1;
    Py_RETURN_NONE;
}

static PyObject *Leg_close(LegObject *self, PyObject *Py_UNUSED(ignored)) {
    drop_srtp(self);
    self->rtp_fd = self->rtcp_fd = -1;
    self->playing = self->tapping = 0;
    Py_CLEAR(self->partner);
    Py_CLEAR(self->source);
    Py_RETURN_NONE;
}

static int Leg_init(LegObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"leg_id", "rtp_fd", "rtcp_fd", "family", NULL};
    PyObject *leg_id;
    int rtp_fd, rtcp_fd, family;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Uiii", names, &leg_id, &rtp_fd, &rtcp_fd, &family))
        return -1;
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "family: AF_INET or AF_INET6");
        return -1;
    }
    PyObject *taps = PyList_New(0);
    if (taps == NULL)
        return -1;
    drop_srtp(self);
    Py_XSETREF(self->leg_id, Py_NewRef(leg_id));
    Py_XSETREF(self->taps, taps);
    self->rtp_fd = rtp_fd;
    self->rtcp_fd = rtcp_fd;
    self->family = family;
    self->remote_len = 0;
    self->party_sends = self->party_receives = 1;
    memset(self->encoding_of, -1, sizeof self->encoding_of);
    for (int i = 0; i < ENCODINGS; i++)
        self->payload_type_of[i] = -1;
    memset(self->clock_rate_of, 0, sizeof self->clock_rate_of);
    self->ssrc = random32();
    self->last_sequence = (uint16_t)random32();
    self->last_timestamp = random32();
    self->source_ssrc = -1;
    self->started = 0;
    self->last_sent = 0;
    self->last_rtp = clock_now(CLOCK_MONOTONIC);
    self->digit_ssrc = self->digit_timestamp = -1;
    return 0;
}

static int Leg_traverse(LegObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->partner);
    Py_VISIT(self->source);
    Py_VISIT(self->taps);
    return 0;
}

static int Leg_clear(LegObject *self) {
    Py_CLEAR(self->partner);
    Py_CLEAR(self->source);
    Py_CLEAR(self->taps);
    return 0;
}

static void Leg_dealloc(LegObject *self) {
    PyObject_GC_UnTrack(self);
    drop_srtp(self);
    Leg_clear(self);
    Py_CLEAR(self->leg_id);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Leg_get_partner(LegObject *self, void *Py_UNUSED(closure)) {
    return Py_NewRef(self->partner != NULL ? (PyObject *)self->partner : Py_None);
}

static PyMethodDef Leg_methods[] = {
    {"read_rtp", (PyCFunction)Leg_read_rtp, METH_NOARGS, "Takes and relays every datagram waiting on the RTP socket."},
    {"read_rtcp", (PyCFunction)Leg_read_rtcp, METH_NOARGS, "Takes and relays every datagram waiting on the RTCP socket."},
    {"set_remote", (PyCFunction)Leg_set_remote, METH_VARARGS, "Where the party is, what it offered, its direction."},
    {"connect", (PyCFunction)Leg_connect, METH_O, "The leg its party's packets go to (None: nowhere)."},
    {"send", (PyCFunction)Leg_send, METH_VARARGS, "Sends one packet of another source to the party."},
    {"set_srtp", (PyCFunction)Leg_set_srtp, METH_VARARGS, "SRTP with these master keys (send, receive), or plain."},
    {"take_taps", (PyCFunction)Leg_take_taps, METH_NOARGS, "What it sent since the last call, while tapping."},
    {"stream_state", (PyCFunction)Leg_stream_state, METH_NOARGS, "Its outbound stream, to go on elsewhere."},
    {"resume_stream", (PyCFunction)Leg_resume_stream, METH_VARARGS, "Goes on with a stream from stream_state."},
    {"close", (PyCFunction)Leg_close, METH_NOARGS, "Forgets its sockets and partner."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Leg_members[] = {
    {"leg_id", T_OBJECT, offsetof(LegObject, leg_id), READONLY, NULL},
    {"playing", T_INT, offsetof(LegObject, playing), 0, "The player feeds it, not its partner."},
    {"tapping", T_INT, offsetof(LegObject, tapping), 0, "Keeps what it sends for a recording."},
    {"packets_in", T_ULONGLONG, offsetof(LegObject, received), 0, NULL},
    {"packets_out", T_ULONGLONG, offsetof(LegObject, sent), 0, NULL},
    {"packets_dropped", T_ULONGLONG, offsetof(LegObject, dropped), 0, NULL},
    {"last_rtp", T_DOUBLE, offsetof(LegObject, last_rtp), 0, "time.monotonic() of its party's last RTP."},
    {"ssrc", T_UINT, offsetof(LegObject, ssrc), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Leg_getset[] = {
    {"partner", (getter)Leg_get_partner, NULL, NULL, NULL},
    {"srtp", (getter)Leg_get_srtp, NULL, "Whether its packets are SRTP.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LegType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "services.media._relay.Leg",
    .tp_doc = "Leg(leg_id, rtp_fd, rtcp_fd, family): one party's side of a call, its packets relayed in C.",
    .tp_basicsize = sizeof(LegObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Leg_init,
    .tp_dealloc = (destructor)Leg_dealloc,
    .tp_traverse = (traverseproc)Leg_traverse,
    .tp_clear = (inquiry)Leg_clear,
    .tp_methods = Leg_methods,
    .tp_members = Leg_members,
    .tp_getset = Leg_getset,
};

static PyObject *set_transcoding(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer from_pcmu, from_pcma;
    if (!PyArg_ParseTuple(args, "y*y*", &from_pcmu, &from_pcma))
        return NULL;
    int ok = from_pcmu.len == 256 && from_pcma.len == 256;
    if (ok) {
        memcpy(transcode[PCMU], from_pcmu.buf, 256);
        memcpy(transcode[PCMA], from_pcma.buf, 256);
    }
    PyBuffer_Release(&from_pcmu);
    PyBuffer_Release(&from_pcma);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "set_transcoding: two tables of 256 bytes");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *set_digit_handler(PyObject *Py_UNUSED(module), PyObject *handler) {
    if (handler != Py_None && !PyCallable_Check(handler)) {
        PyErr_SetString(PyExc_TypeError, "set_digit_handler: a callable or None");
        return NULL;
    }
    Py_XSETREF(digit_handler, handler == Py_None ? NULL : Py_NewRef(handler));
    Py_RETURN_NONE;
}

static PyObject *counters(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{s:K,s:K,s:K}", "packets_in", packets_in, "packets_relayed", packets_relayed,
                         "packets_dropped", packets_dropped);
}

static PyMethodDef module_methods[] = {
    {"set_transcoding", set_transcoding, METH_VARARGS, "The PCMU->PCMA and PCMA->PCMU tables (256 bytes each)."},
    {"set_digit_handler", set_digit_handler, METH_O, "handler(leg_id, key, duration_ms) for each RFC 4733 key."},
    {"counters", counters, METH_NOARGS, "The worker's packets in, relayed and dropped so far."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "services.media._relay",
    .m_doc = "The media worker's per-packet data path.", .m_size = -1, .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__relay(void) {
    if (srtp_init() != srtp_err_status_ok) {
        PyErr_SetString(PyExc_ImportError, "libsrtp did not initialize");
        return NULL;
    }
    if (PyType_Ready(&LegType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Leg", (PyObject *)&LegType) < 0 || PyModule_AddIntConstant(m, "PCMU", PCMU) < 0 ||
        PyModule_AddIntConstant(m, "PCMA", PCMA) < 0 ||
        PyModule_AddIntConstant(m, "TELEPHONE_EVENT", TELEPHONE_EVENT) < 0 ||
        PyModule_AddIntConstant(m, "ENCODINGS", ENCODINGS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
