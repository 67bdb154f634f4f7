#!/usr/bin/env python3
"""Creates a container in Azurite (tests only).

    create_container.py BLOB_ENDPOINT NAME

Uses Azurite's documented development account; the key below is public.
"""
import sys

from azure.storage.blob import BlobServiceClient

DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

endpoint, name = sys.argv[1], sys.argv[2]
conn = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};BlobEndpoint={endpoint};"
BlobServiceClient.from_connection_string(conn).create_container(name)
