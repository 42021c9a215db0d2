"""Write a declarative file with N services (one route each) and M consumers (one key each)."""
import sys

services, consumers, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with open(path, "w") as f:
    f.write('_format_version: "3.0"\nservices:\n')
    for i in range(services):
        f.write(f"- name: svc-{i}\n  url: http://upstream-{i % 50}.internal:8080/api/{i}\n  tags: [bench, shard-{i % 10}]\n")
        f.write(f"  routes:\n  - name: route-{i}\n    paths: [/svc/{i}]\n    methods: [GET, POST]\n")
    f.write("consumers:\n")
    for i in range(consumers):
        f.write(f"- username: user-{i}\n  custom_id: cid-{i}\n")
        if i % 5 == 0:
            f.write(f"  keyauth_credentials: [{{key: key-{i}}}]\n")
