"""The bias policy of CG-guided rounds: the tabulated bias, its VES update, walker seeding."""
