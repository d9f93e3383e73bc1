/* Umbrella header of the C shim: the KVM uAPI this project needs. */
#ifndef CKVM_HEADERS_H
#define CKVM_HEADERS_H
#include "ckvm_uapi.h"
#include "ckvm_ioctls.h"
#include "ckvm_experimental.h"
#endif
