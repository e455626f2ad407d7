"""The NFS kind's pure parts: the exports(5) file bsud writes, and ``exportfs -s`` read back."""

from __future__ import annotations

from bsud.exports.nfs import NfsExport, fsid, parse_exportfs, render


def nfs(**kw) -> NfsExport:
    return NfsExport(kind="nfs", **{"clients": ("10.0.0.0/24",), **kw})


def test_the_file_names_each_client_with_a_stable_fsid():
    text = render("data", "/mnt/data", [nfs(), nfs(path="projects/a", clients=("client.example", "*"),
                                                  options=("ro", "all_squash", "anonuid=1000"))])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    whole, sub = fsid("data", ""), fsid("data", "projects/a")
    assert lines == [
        f"/mnt/data 10.0.0.0/24(rw,sync,root_squash,no_subtree_check,fsid={whole})",
        f"/mnt/data/projects/a client.example(ro,all_squash,anonuid=1000,fsid={sub}) *(ro,all_squash,anonuid=1000,"
        f"fsid={sub})",
    ]
    assert text.startswith("# Written by bsud for drive 'data'")
    assert fsid("data", "projects/a/") == sub != fsid("logs", "projects/a")  # per drive and path, stable
    assert render("data", "/mnt/data", []) is None


def test_exportfs_listing_short_and_wrapped_lines():
    listed = parse_exportfs(
        "/mnt/data  10.0.0.0/24(sync,wdelay,hide,no_subtree_check,fsid=x,sec=sys,rw,secure,root_squash)\n"
        "/mnt/data/a-very-long-directory-name-that-wraps\n"
        "\t\tclient.example(sync,ro,fsid=y) *(sync,ro,fsid=y)\n"
    )
    assert listed == {
        "/mnt/data": ["10.0.0.0/24(sync,wdelay,hide,no_subtree_check,fsid=x,sec=sys,rw,secure,root_squash)"],
        "/mnt/data/a-very-long-directory-name-that-wraps": ["client.example(sync,ro,fsid=y)", "*(sync,ro,fsid=y)"],
    }
