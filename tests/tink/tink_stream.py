#!/usr/bin/env python3
"""Google Tink's streaming AEAD (AES256_GCM_HKDF_1MB) on raw key material.

Used by Ferry's interop tests: data encrypted by Ferry must decrypt here and
the reverse.

    tink_stream.py encrypt KEY_HEX AAD_HEX IN OUT
    tink_stream.py decrypt KEY_HEX AAD_HEX IN OUT
"""
import sys

import tink
from tink import cleartext_keyset_handle, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

TYPE_URL = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"


def primitive(key: bytes) -> streaming_aead.StreamingAead:
    params = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
        ciphertext_segment_size=1 << 20,
        derived_key_size=32,
        hkdf_hash_type=common_pb2.SHA256,
    )
    proto = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(version=0, params=params, key_value=key)
    keyset = tink_pb2.Keyset(
        primary_key_id=1,
        key=[
            tink_pb2.Keyset.Key(
                key_data=tink_pb2.KeyData(
                    type_url=TYPE_URL,
                    value=proto.SerializeToString(),
                    key_material_type=tink_pb2.KeyData.SYMMETRIC,
                ),
                status=tink_pb2.ENABLED,
                key_id=1,
                output_prefix_type=tink_pb2.RAW,
            )
        ],
    )
    handle = cleartext_keyset_handle.from_keyset(keyset)
    return handle.primitive(streaming_aead.StreamingAead)


def main() -> int:
    mode, key_hex, aad_hex, src, dst = sys.argv[1:6]
    streaming_aead.register()
    p = primitive(bytes.fromhex(key_hex))
    aad = bytes.fromhex(aad_hex)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if mode == "encrypt":
            with p.new_encrypting_stream(fout, aad) as enc:
                while chunk := fin.read(1 << 16):
                    enc.write(chunk)
        elif mode == "decrypt":
            with p.new_decrypting_stream(fin, aad) as dec:
                while chunk := dec.read(1 << 16):
                    fout.write(chunk)
        else:
            print(f"unknown mode {mode}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except tink.TinkError as e:
        print(f"tink: {e}", file=sys.stderr)
        sys.exit(1)
