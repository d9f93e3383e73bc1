/* OpenSSL's libcrypto: SHA-2 digests (EVP) and ECDSA P-384 keys and
 * signatures for SEV-SNP ID blocks. Debian: libssl-dev (OpenSSL 3). */
#ifndef CLIBCRYPTO_SHIM_H
#define CLIBCRYPTO_SHIM_H
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

/* EVP_PKEY_PUBLIC_KEY is an expression macro, which Swift does not import. */
static const int clibcrypto_evp_pkey_public_key = EVP_PKEY_PUBLIC_KEY;
#endif
