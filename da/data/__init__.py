"""Domains and their data: the dataset registry and readers (:mod:`da.data.domain`, :mod:`da.data.readers`), and
:class:`~da.data.datamodule.DomainDataModule`. Knows nothing about methods (an import-linter contract).

Nothing is imported here, so ``import da.data.domain`` stays cheap (no Lightning)."""
