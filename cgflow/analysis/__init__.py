"""Analysis of sampled data: free-energy surfaces, their errors, comparison with references, and plots."""
