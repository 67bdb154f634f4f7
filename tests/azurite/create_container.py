#!/usr/bin/env python3
"""Creates a container in Azurite (tests only).

    create_container.py BLOB_ENDPOINT NAME [SAS_PERMISSIONS]

With SAS_PERMISSIONS (e.g. "rl" for read and list), prints a SAS token for the
container that grants only those. Uses Azurite's documented development
account; the key below is public.
"""
import datetime
import sys

from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

endpoint, name = sys.argv[1], sys.argv[2]
conn = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};BlobEndpoint={endpoint};"
BlobServiceClient.from_connection_string(conn).create_container(name)
if len(sys.argv) > 3:
    print(
        generate_container_sas(
            "devstoreaccount1",
            name,
            account_key=DEV_KEY,
            permission=ContainerSasPermissions.from_string(sys.argv[3]),
            expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
        )
    )
