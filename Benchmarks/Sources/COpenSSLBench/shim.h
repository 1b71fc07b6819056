// The benchmark's own view of the system OpenSSL, for the C baseline's TLS subscriber (the library's COpenSSL is not
// a product).
#include <openssl/ssl.h>
#include <openssl/err.h>
