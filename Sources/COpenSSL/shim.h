// The system's OpenSSL (1.1.1 or 3.x), for the package's own TLS layer. Only what Swift cannot see by itself: the
// function-like macros it uses, as inline functions.
#ifndef COPENSSL_SHIM_H
#define COPENSSL_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

static inline int copenssl_set_min_proto_version(SSL_CTX *context, int version) {
    return (int)SSL_CTX_set_min_proto_version(context, version);
}
static inline int copenssl_set_server_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}
static inline long copenssl_set_mode(SSL_CTX *context, long mode) { return SSL_CTX_set_mode(context, mode); }
// No renegotiation: a write mid-renegotiation could take only part of hiredis's output buffer.
static inline void copenssl_disable_renegotiation(SSL_CTX *context) {
#ifdef SSL_OP_NO_RENEGOTIATION
    SSL_CTX_set_options(context, SSL_OP_NO_RENEGOTIATION);
#endif
}
// A memory BIO that reports "retry" instead of end-of-file when empty: more ciphertext may still come.
static inline void copenssl_mem_retry_when_empty(BIO *bio) { BIO_set_mem_eof_return(bio, -1); }

#endif
