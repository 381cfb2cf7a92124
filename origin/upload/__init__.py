"""tus 1.0 resumable uploads: the protocol (sans-IO, :mod:`.tus`), the upload records
(:mod:`.records`, LMDB), the object store's multipart API (:mod:`.s3`) and the service that
streams each PATCH into it (:mod:`.service`)."""
