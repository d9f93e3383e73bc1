/* OpenSSL's libcrypto, for SHA-384 (EVP digests). Debian: libssl-dev. */
#ifndef CLIBCRYPTO_SHIM_H
#define CLIBCRYPTO_SHIM_H
#include <openssl/evp.h>
#include <openssl/sha.h>
#endif
