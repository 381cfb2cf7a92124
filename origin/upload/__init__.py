"""tus 1.0 resumable uploads: the protocol (sans-IO, :mod:`.tus`), the upload records
(:mod:`.records`: in the catalogue's database, a lease per upload), the object store's
multipart API (:mod:`.s3`), the service that streams each PATCH into it (:mod:`.service`), and
the one-time import of the LMDB records of earlier versions (:mod:`.legacy`)."""
