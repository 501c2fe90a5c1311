"""
@article{Rangan2022radial,
  title = "Radial-recombination for rigid rotational alignment of images and volumes",
  author = "Rangan, Aaditya",
  journal = "arXiv preprint arXiv:2202.07235",
  year = "2022",
  eprint = "2202.07235",
  archivePrefix = "arXiv",
  primaryClass = "math.NA",
  url = "https://arxiv.org/abs/2202.07235"
}

@article{Rangan2020factorization,
  title = "Factorization of the translation kernel for fast rigid image alignment",
  author = "Rangan, Aaditya and Spivak, Marina and And{\'e}n, Joakim and Barnett, Alex",
  journal = "Inverse Problems",
  volume = "36",
  number = "2",
  pages = "024001",
  year = "2020"
}

@article{Rangan2023hessian,
  title = "Estimating the tails of the spectrum of the {Hessian} of the log-likelihood for
           ab-initio single-particle reconstruction in electron cryomicroscopy",
  author = "Rangan, Aaditya V. and Tang, Wai-Shing and Cossio, Pilar and Zhang, Kexin and
            Grigorieff, Nikolaus",
  journal = "arXiv preprint arXiv:2411.13263",
  year = "2024",
  eprint = "2411.13263",
  archivePrefix = "arXiv",
  url = "https://arxiv.org/abs/2411.13263"
}

@article{Kreymer2023micrograph,
  title = "A stochastic approximate expectation-maximization for structure determination
           directly from cryo-{EM} micrographs",
  author = "Kreymer, Shay and Singer, Amit and Bendory, Tamir",
  journal = "arXiv preprint arXiv:2303.02157",
  year = "2023",
  eprint = "2303.02157",
  archivePrefix = "arXiv",
  url = "https://arxiv.org/abs/2303.02157"
}

@inproceedings{Ullrich2019differentiable,
  title = "Differentiable probabilistic models of scientific imaging with the {Fourier}
           slice theorem",
  author = "Ullrich, Karen and van den Berg, Rianne and Brubaker, Marcus and Fleet, David
            and Welling, Max",
  booktitle = "Proceedings of the 35th Conference on Uncertainty in Artificial
               Intelligence (UAI 2019)",
  series = "Proceedings of Machine Learning Research",
  volume = "115",
  pages = "399--411",
  publisher = "PMLR",
  year = "2019",
  url = "https://proceedings.mlr.press/v115/ullrich20a.html"
}

@article{Lederman2020hyper,
  title = "Hyper-molecules: on the representation and recovery of dynamical structures for
           applications in flexible macro-molecules in cryo-{EM}",
  author = "Lederman, Roy R. and And{\'e}n, Joakim and Singer, Amit",
  journal = "Inverse Problems",
  volume = "36",
  number = "4",
  pages = "044005",
  year = "2020",
  doi = "10.1088/1361-6420/ab5ede"
}
"""
