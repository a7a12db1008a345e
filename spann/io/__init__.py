"""Where an index's bytes come from and go to: mapped, fetched and direct reads, the sources
(directory, zip, object store), the index files' writer and opener, publishing."""
