"""The mechanisms every stage shares: atomic files, content keys, seeding, image keys, job progress."""
